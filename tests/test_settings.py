"""Settings come from the environment; a bad value stops startup with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

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
