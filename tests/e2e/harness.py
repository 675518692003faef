"""The browser-test harness: the real app in real processes, and helpers for scenarios.

`start_app()` provisions a fresh database (same code as `make dev`), migrates, seeds the two
demo tenants and starts gunicorn and a Celery worker against it; `tests/e2e/conftest.py`
wraps it in fixtures. The helpers here drive the browser (`login`, `logout`, `screenshot`)
or the app's own process (`manage`).

Playwright's sync API keeps an event loop running in the test thread while it is started,
so Django's ORM refuses to run in these tests (SynchronousOnlyOperation). Look at the
database through HTTP or through `manage(app, "shell", "-c", ...)`, which runs in the app's
environment as the runtime role.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from psycopg import sql

from config.processes import free_port, spawn, stop_groups, tail_of
from tenants.provisioning import RoleSpec, provision

BASE_DIR = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
SCREENSHOT_DIR = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DEMO_PASSWORD = "playbook-demo"  # seed_demo's development-only accounts
REDIS_DB = 7  # the e2e app's Redis database index, on the developer's Redis server
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def require_chromium() -> str:
    """The browser the tests drive: Debian's chromium, never a Playwright download."""
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        raise RuntimeError(
            f"The browser tests need Debian's chromium at {CHROMIUM}. Run `make browser` "
            "(or, as root, `apt-get install chromium`); `playwright install` is not used."
        )
    return str(CHROMIUM)


# --------------------------------------------------------------------------- the app


@dataclass
class E2EApp:
    """The running app: `url` is what the browser uses (and the app's SITE_URL)."""

    url: str
    database: str
    env: dict[str, str]
    log_dir: Path
    web_log: Path
    worker_log: Path
    queue: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log_tail(self, which: str = "web", lines: int = 40) -> str:
        """The last `lines` lines of the web server's ("web") or the worker's ("worker") log."""
        return tail_of(self.web_log if which == "web" else self.worker_log, lines)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _with_redis_db(url: str, index: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{index}"))


def _required_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(
            f"The browser tests need {name}; run them with `make test` "
            '(e.g. `make test PYTEST_ARGS="tests/e2e"`), which starts the services.'
        )
    return value


def app_env(database: str, port: int, queue: str, redis_db: int = REDIS_DB) -> dict[str, str]:
    """The app's environment: the developer's services, a database and a Redis index of
    its own, a queue of its own, DEBUG off (Django's friendly error pages)."""
    redis_url = _with_redis_db(_required_env("REDIS_URL"), redis_db)
    env = dict(os.environ)
    env.update(
        {
            "PLAYBOOK_ENV": "development",
            "DATABASE_URL": _with_database(_required_env("DATABASE_URL"), database),
            "DATABASE_OWNER_URL": _with_database(_required_env("DATABASE_OWNER_URL"), database),
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "LIMITER_REDIS_URL": redis_url,
            "CELERY_TASK_DEFAULT_QUEUE": queue,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "DEBUG": "0",
            "DEV_IDP": "1",
            "SITE_URL": f"http://127.0.0.1:{port}",
            "PYTHONPATH": str(BASE_DIR),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The issuer follows SITE_URL; a value from the developer's shell would point elsewhere.
    for name in ("OIDC_ISSUER", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"):
        env.pop(name, None)
    return env


def _run_manage(env: dict[str, str], log: Path, *args: str) -> None:
    with log.open("ab") as out:
        done = subprocess.run(
            [sys.executable, str(BASE_DIR / "manage.py"), *args],
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode:
        raise RuntimeError(
            f"`manage.py {' '.join(args)}` failed ({done.returncode}):\n{tail_of(log, 60)}"
        )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _wait_until_ready(
    app: E2EApp, web: subprocess.Popen[bytes], worker: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    web_ready = worker_ready = False
    while time.monotonic() < deadline:
        for proc, name, log in ((web, "gunicorn", app.web_log), (worker, "celery", app.worker_log)):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} before the app was ready; "
                    f"the end of {log}:\n{tail_of(log, 60)}"
                )
        web_ready = web_ready or _ready(app.url)
        worker_ready = worker_ready or " ready." in app.worker_log.read_text(errors="replace")
        if web_ready and worker_ready:
            return
        time.sleep(0.2)
    waiting = [n for n, ok in (("gunicorn /readyz", web_ready), ("celery", worker_ready)) if not ok]
    raise RuntimeError(
        f"{' and '.join(waiting)} not ready after {READY_TIMEOUT:.0f} s.\n"
        f"web ({app.web_log}):\n{tail_of(app.web_log)}\n"
        f"worker ({app.worker_log}):\n{tail_of(app.worker_log)}"
    )


def start_app(
    *,
    prefix: str = "e2e",
    redis_db: int = REDIS_DB,
    seed: bool = True,
    extra_env: dict[str, str] | None = None,
    web_workers: int = 2,
    web_threads: int = 4,
    worker_concurrency: int = 2,
) -> E2EApp:
    """Provision, migrate, seed, start gunicorn and a worker; wait until both are ready.

    The database is `<prefix>_<runtime database>`, the queue `<prefix>-<random>`, Redis the
    developer's server at index `redis_db`; `seed=False` leaves the database empty (the
    caller sets up its own data with `manage`), `extra_env` overrides the app's settings.
    The load suite (tests/reliability/load.py) starts its app with these."""
    admin_url = _required_env("DATABASE_ADMIN_URL")
    runtime, owner = (
        urlsplit(_required_env("DATABASE_URL")),
        urlsplit(_required_env("DATABASE_OWNER_URL")),
    )
    database = f"{prefix}_{runtime.path.lstrip('/')}"
    port = free_port()
    queue = f"{prefix}-{secrets.token_hex(6)}"
    env = {**app_env(database, port, queue, redis_db), **(extra_env or {})}
    log_dir = Path(tempfile.mkdtemp(prefix=f"playbook-{prefix}-"))
    app = E2EApp(
        url=env["SITE_URL"],
        database=database,
        env=env,
        log_dir=log_dir,
        web_log=log_dir / "gunicorn.log",
        worker_log=log_dir / "celery.log",
        queue=queue,
    )
    try:
        provision(
            admin_url,
            database=database,
            owner=RoleSpec(owner.username or "", owner.password or ""),
            runtime=RoleSpec(runtime.username or "", runtime.password or ""),
            recreate=True,
        )
        setup_log = log_dir / "setup.log"
        _run_manage(env, setup_log, "migrate", "--no-input", "--verbosity", "0")
        # The processes start while the demo data is seeded (they need only the schema); the
        # worker picks up the seeded questions' agent runs from its queue.
        web = spawn(
            [
                str(BIN_DIR / "gunicorn"),
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(web_workers),
                "--threads",
                str(web_threads),
                "--timeout",
                "60",
                "--graceful-timeout",
                "5",
                "--access-logfile",
                "-",
            ],
            env,
            app.web_log,
        )
        app.processes.append(web)
        worker = spawn(
            [
                str(BIN_DIR / "celery"),
                "-A",
                "config",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(worker_concurrency),
                "-Q",
                queue,
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            env,
            app.worker_log,
        )
        app.processes.append(worker)
        if seed:
            _run_manage(env, setup_log, "seed_demo")
        _wait_until_ready(app, web, worker)
    except BaseException:
        stop_app(app)
        raise
    return app


def stop_app(app: E2EApp) -> None:
    """Stop both process groups (SIGTERM, SIGKILL after 10 s) and drop the database."""
    stop_groups(app.processes, timeout=STOP_TIMEOUT)
    with psycopg.connect(_required_env("DATABASE_ADMIN_URL"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(app.database))
        )


def manage(app: E2EApp, *args: str, timeout: float = 120.0) -> str:
    """Run `manage.py ARGS` in the app's environment (its database, as the runtime role);
    returns stdout. E.g. `manage(e2e_app, "shell", "-c", "print(...)")`."""
    return manage_in(app.env, *args, timeout=timeout)


def manage_in(env: dict[str, str], *args: str, timeout: float = 120.0) -> str:
    """Run `manage.py ARGS` in the environment `env`; returns stdout, or fails the test with
    the command's output."""
    done = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode:
        raise AssertionError(
            f"`manage.py {' '.join(args)}` failed ({done.returncode}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout


_WAIT_FOR_RUNS = """
import time
from agents.models import AgentRun
from tenants.context import tenant_context
from tenants.models import Tenant

busy = [AgentRun.Status.QUEUED, AgentRun.Status.RUNNING]
deadline = time.monotonic() + {timeout}
while True:
    pending = 0
    for tenant in Tenant.objects.all():
        with tenant_context(tenant):
            pending += AgentRun.objects.filter(status__in=busy).count()
    if not pending or time.monotonic() > deadline:
        print(pending)
        break
    time.sleep(0.3)
"""


def wait_for_agent_runs(app: E2EApp, timeout: float = 60.0) -> None:
    """Wait until no agent run of any tenant is queued or running (e.g. the seeded
    questions' drafts are in the review queue)."""
    script = textwrap.dedent(_WAIT_FOR_RUNS).format(timeout=float(timeout))
    pending = manage(app, "shell", "-c", script, timeout=timeout + 60).strip().splitlines()[-1]
    if pending != "0":
        raise AssertionError(
            f"{pending} agent run(s) still queued or running after {timeout:.0f} s; "
            f"the end of the worker's log:\n{app.log_tail('worker')}"
        )


# --------------------------------------------------------------------------- the browser


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "screenshot"


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save tests/e2e/screenshots/<name>.png and return its path."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{_safe_name(name)}.png"
    if full_page:
        # From the top: sticky bars would otherwise be drawn where the page was scrolled to.
        page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _back_in_app(origin: str) -> Callable[[str], bool]:
    def check(url: str) -> bool:
        parts = urlsplit(url)
        return _origin(url) == origin and not parts.path.startswith(("/idp/", "/oidc/", "/logout/"))

    return check


def _alerts(page: Page) -> str:
    with contextlib.suppress(Exception):
        return " | ".join(t.strip() for t in page.get_by_role("alert").all_inner_texts())
    return ""


def login(
    page: Page, username: str, password: str = DEMO_PASSWORD, timeout: float = 15_000
) -> None:
    """Sign in through the whole OpenID Connect flow in the browser: /login/, "Continue to
    sign-in", the local provider's form, /oidc/callback/, and back on the app (where the
    app sends the person: LOGIN_REDIRECT_URL and its redirects). Fails if the provider
    refuses the password or the page the person lands on is a server error."""
    page.goto("/login/")
    origin = _origin(page.url)
    if urlsplit(page.url).path != "/login/":
        raise AssertionError(f"Already signed in (at {page.url}); call logout(page) first.")
    page.get_by_role("link", name="Continue to sign-in").click()
    page.wait_for_url(re.compile(r"/idp/login/"), timeout=timeout)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    try:
        with page.expect_navigation(url=_back_in_app(origin), timeout=timeout) as landing:
            page.get_by_role("button", name="Sign in").click()
    except PlaywrightTimeoutError:
        raise AssertionError(
            f"Signing in as {username} did not come back to the app; at {page.url}. {_alerts(page)}"
        ) from None
    response = landing.value
    if response is not None and response.status >= 500:
        raise AssertionError(
            f"Signed in as {username}, but the landing page {page.url} answered "
            f"{response.status} (the web server's log has the traceback)."
        )


_SUBMIT_LOGOUT = """
(token) => {
  const form = document.createElement("form");
  form.method = "post";
  form.action = "/logout/";
  const field = document.createElement("input");
  field.type = "hidden";
  field.name = "csrfmiddlewaretoken";
  field.value = token;
  form.appendChild(field);
  document.body.appendChild(form);
  form.submit();
}
"""


def logout(page: Page, timeout: float = 15_000) -> None:
    """Log out as a person does: the page's "Log out" button when it has one, else the same
    POST /logout/ from the page. Follows the provider's end-session redirect back to the
    app and checks that the session is gone (`/api/v1/me` is no longer 200)."""
    if not page.url.startswith("http"):
        page.goto("/healthz")
    origin = _origin(page.url)
    button = page.get_by_role("button", name=re.compile(r"^\s*log ?out\s*$", re.IGNORECASE))
    with page.expect_navigation(url=_back_in_app(origin), timeout=timeout):
        if button.count() and button.first.is_visible():
            button.first.click()
        else:
            cookies = page.context.cookies(origin)
            token = next((c.get("value", "") for c in cookies if c.get("name") == "csrftoken"), "")
            if not token:
                raise AssertionError(f"No CSRF cookie for {origin}: is this page signed in?")
            page.evaluate(_SUBMIT_LOGOUT, token)
    status = page.request.get(f"{origin}/api/v1/me").status
    if status == 200:
        raise AssertionError(f"Still signed in after logging out (at {page.url}).")
