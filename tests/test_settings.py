"""Settings come from the environment; a bad value stops startup with a message naming it."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from html import unescape as html_unescape
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.db import OperationalError, connections
from django.db.migrations.executor import MigrationExecutor
from django.test import Client, override_settings

from config import views

SECRET = "s3cr3t-value-that-must-not-be-echoed"


def load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in env}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('ok')"],
        env={**clean, **env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_current_environment_loads() -> None:
    assert load_settings().stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEBUG", "maybe", "DEBUG must be a boolean"),
        ("DATABASE_CONN_MAX_AGE", "sixty", "DATABASE_CONN_MAX_AGE has an invalid value"),
        ("DATABASE_POOL", "2", "DATABASE_POOL must be a boolean"),
        ("PLAYBOOK_ENV", "staging", "PLAYBOOK_ENV must be one of"),
        ("DATABASE_URL", f"mysql://nope:{SECRET}@", "DATABASE_URL is not a valid database URL"),
        ("THROTTLE_LOGIN_RATE", "many per minute", "THROTTLE_LOGIN_RATE must be a rate"),
        ("THROTTLE_API_CREDENTIAL_RATE", "0/min", "THROTTLE_API_CREDENTIAL_RATE must be a rate"),
        ("ADMIN_LOGIN_FAILURE_LIMIT", "0", "ADMIN_LOGIN_FAILURE_LIMIT and"),
        ("TRUSTED_PROXY_COUNT", "-1", "TRUSTED_PROXY_COUNT must be 0 or more"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, message: str) -> None:
    result = load_settings(**{variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
    assert SECRET not in result.stderr


def test_production_requires_its_secrets() -> None:
    result = load_settings(PLAYBOOK_ENV="production", DEBUG="0", SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
    debug = load_settings(PLAYBOOK_ENV="production", DEBUG="1", SECRET_KEY="x" * 50)
    assert "DEBUG must be off" in debug.stderr


def test_the_app_may_not_connect_as_the_owner_role() -> None:
    owner_url = os.environ["DATABASE_OWNER_URL"]
    result = load_settings(DATABASE_URL=owner_url)
    assert result.returncode != 0
    assert "DATABASE_URL and DATABASE_OWNER_URL use the same role" in result.stderr


# --------------------------------------------------------------------------- production


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A production environment that does not read the development stack.env."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PLAYBOOK_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PLAYBOOK_ENV": "production",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "playbook.example.com",
        "DATABASE_URL": "postgres://playbook_app:app-pw@db.example.com:5432/playbook",
        "DATABASE_OWNER_URL": "postgres://playbook_owner:owner-pw@db.example.com:5432/playbook",
        "REDIS_URL": "redis://redis.example.com:6379/0",
        **extra,
    }


def test_production_settings_pass_the_deploy_checks(tmp_path: Path) -> None:
    # `check --deploy` without --database connects to nothing.
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=production_env(tmp_path),
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize("dev_idp", ["1", "on"])
def test_production_refuses_the_development_identity_provider(tmp_path: Path, dev_idp: str) -> None:
    # The local provider's sign-up page (/idp/signup/) lets anyone pick their organisation
    # and role, and the app trusts what it asserts.
    command = [sys.executable, "-c", "import django; django.setup(); print('ok')"]
    issuer = {"OIDC_ISSUER": "https://login.example.org/realms/pb"}
    refused = subprocess.run(
        command,
        env=production_env(tmp_path, DEV_IDP=dev_idp, **issuer),
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "ImproperlyConfigured: DEV_IDP must be off when PLAYBOOK_ENV=production." in (
        refused.stderr
    )
    assert refused.stdout == ""
    # The same environment without it starts.
    started = subprocess.run(
        command,
        env=production_env(tmp_path, DEV_IDP="0", **issuer),
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "ok"


def test_production_security_settings(tmp_path: Path) -> None:
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({k: getattr(s, k) for k in ('SECURE_SSL_REDIRECT', "
        "'SECURE_HSTS_SECONDS', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', "
        "'CSRF_TRUSTED_ORIGINS', 'X_FRAME_OPTIONS', 'SECURE_REDIRECT_EXEMPT', "
        "'CONTENT_SECURITY_POLICY')}))"
    )
    env = production_env(tmp_path, OIDC_ISSUER="https://login.example.org/realms/pb")
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_HSTS_SECONDS"] >= 31536000
    assert values["SESSION_COOKIE_SECURE"] and values["CSRF_COOKIE_SECURE"]
    assert values["CSRF_TRUSTED_ORIGINS"] == ["https://playbook.example.com"]
    assert values["X_FRAME_OPTIONS"] == "DENY"
    assert values["SECURE_REDIRECT_EXEMPT"] == ["^healthz$", "^readyz$"]
    csp = values["CONTENT_SECURITY_POLICY"]
    assert csp["script-src"] == ["'self'"]
    # Logout and login end in a redirect to the provider: form-action must allow it.
    assert csp["form-action"] == ["'self'", "https://login.example.org"]


# --------------------------------------------------------------------------- CSP


@pytest.mark.django_db
def test_every_page_gets_the_content_security_policy() -> None:
    client = Client()
    for url in ("/", "/healthz", "/login/", "/api/schema/"):
        policy = client.get(url)["Content-Security-Policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self';" in policy
        assert "frame-ancestors 'none'" in policy
        assert "object-src 'none'" in policy


@pytest.mark.django_db
def test_api_docs_load_only_same_origin_scripts() -> None:
    client = Client()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<script>" not in html  # the init script comes from a URL (split view)
    scripts = re.findall(r'<script src="([^"]+)"', html)
    styles = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    assert scripts and styles
    for url in scripts + styles:
        assert url.startswith("/"), url  # no CDN: drf-spectacular-sidecar's static files
    init = client.get(html_unescape(scripts[-1]))
    assert init.status_code == 200
    assert init["Content-Type"].startswith("application/javascript")


# --------------------------------------------------------------------------- /readyz


@pytest.fixture
def fresh_readyz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "_migrations_applied", False)


def readyz() -> tuple[int, dict[str, Any]]:
    response = Client().get("/readyz")
    return response.status_code, response.json()


@pytest.mark.django_db
def test_readyz_ok(fresh_readyz: None) -> None:
    status, body = readyz()
    assert status == 200, body
    assert body == {
        "status": "ok",
        "checks": {"database": "ok", "database_role": "ok", "migrations": "ok", "redis": "ok"},
    }


@pytest.mark.django_db
def test_readyz_redis_down() -> None:
    unreachable = {
        alias: {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
        for alias in ("default", "sessions")
    }
    with override_settings(CACHES=unreachable):  # resets the cache handlers
        status, body = readyz()
    assert status == 503
    assert body["failing"] == ["redis"]
    assert body["checks"]["redis"].startswith("unavailable")
    assert body["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_readyz_unsafe_runtime_role(monkeypatch: pytest.MonkeyPatch) -> None:
    # Connecting the test as a superuser is impractical; the check itself is
    # tenants.checks.runtime_role_problems, tested against real roles in test_tenant_checks.
    def superuser(connection: Any) -> list[checks.CheckMessage]:
        return [checks.Error("superuser", id="tenants.E010")]

    monkeypatch.setattr(views, "runtime_role_problems", superuser)
    status, body = readyz()
    assert status == 503
    assert body["failing"] == ["database_role"]
    assert body["checks"]["database_role"] == "unsafe (tenants.E010)"


@pytest.mark.django_db
def test_readyz_pending_migrations(fresh_readyz: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        MigrationExecutor, "migration_plan", lambda self, targets: [("migration", False)] * 2
    )
    status, body = readyz()
    assert status == 503
    assert body["failing"] == ["migrations"]
    assert body["checks"]["migrations"] == "2 pending"
    monkeypatch.undo()
    assert readyz()[0] == 200


@pytest.mark.django_db
def test_readyz_database_down(fresh_readyz: None, monkeypatch: pytest.MonkeyPatch) -> None:
    connection = connections["default"]

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", refuse)
    status, body = readyz()
    monkeypatch.undo()
    assert status == 503
    assert body["failing"] == ["database", "database_role", "migrations"]
    assert body["checks"] == {
        "database": "unavailable (OperationalError)",
        "database_role": "not checked",
        "migrations": "not checked",
        "redis": "ok",
    }
