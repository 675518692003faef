"""Run the benchmarks and write bench/results/latest.json and latest.md.

    make bench        # = python -m config.devstack run -- python bench/run.py

The dev stack's services must be up (`make bench` starts them). Each benchmark module in
BENCHMARKS has `run() -> dict` (flat keys) and `TABLE` (rows of the Markdown summary).

    BENCH_ONLY=bench.machinery python -m config.devstack run -- python bench/run.py

runs only the named modules (comma-separated) and writes bench/results/partial.json.tmp and
partial.md.tmp instead, leaving latest.json and latest.md alone.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ["bench.limiter", "bench.rls", "bench.vectors", "bench.machinery"]


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def markdown(results: dict[str, Any], tables: list[list[tuple[str, str, str]]]) -> str:
    m = results["machine"]
    lines = [
        f"# Benchmarks ({results['timestamp']})",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gb']} GB memory, {m['platform']}, "
        f"Python {m['python']}"
        + (f", Redis {results['redis_version']}" if results.get("redis_version") else "")
        + ".",
        "",
        "| measure | value |",
        "| --- | --- |",
    ]
    for table in tables:
        for key, label, unit in table:
            if key in results:
                value = results[key]
                shown = f"{value:.3g}" if isinstance(value, float) else str(value)
                lines.append(f"| {label} | {shown}{' ' + unit if unit else ''} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    only = [name.strip() for name in os.environ.get("BENCH_ONLY", "").split(",") if name.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        print(f"[bench] BENCH_ONLY names unknown modules: {', '.join(unknown)}")
        return 2
    results: dict[str, Any] = {}
    tables = []
    started = time.perf_counter()
    for name in only or BENCHMARKS:
        module = importlib.import_module(name)
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        results.update(module.run())
        print(f"[bench] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
        tables.append(getattr(module, "TABLE", []))
    results["machine"] = machine()
    results["timestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    results["duration_s"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem, suffix = ("partial", ".tmp") if only else ("latest", "")
    json_name, md_name = f"{stem}.json{suffix}", f"{stem}.md{suffix}"
    (RESULTS / json_name).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    summary = markdown(results, tables)
    (RESULTS / md_name).write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
