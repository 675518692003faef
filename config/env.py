"""Strict reading of settings from the environment.

django-environ does the parsing; this wrapper makes a bad value fail loudly with a
message that names the variable (and never echoes the value, which may be a secret).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class StrictEnv(environ.Env):
    def get_value(
        self,
        var: str,
        cast: Any = None,
        default: Any = environ.Env.NOTSET,
        parse_default: bool = False,
    ) -> Any:
        raw = self.ENVIRON.get(var)
        if cast is bool and raw is not None:
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ImproperlyConfigured(
                    f"Environment variable {var} must be a boolean "
                    "(one of 1/0, true/false, yes/no, on/off)."
                )
            return lowered in _TRUE
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except ImproperlyConfigured as exc:
            raise ImproperlyConfigured(f"Set the environment variable {var}. ({exc})") from None
        except (ValueError, TypeError, KeyError, AttributeError):
            expected = getattr(cast, "__name__", None) or str(cast or "a valid value")
            raise ImproperlyConfigured(
                f"Environment variable {var} has an invalid value; expected {expected}."
            ) from None

    def choice(self, var: str, choices: tuple[str, ...], default: str) -> str:
        value = str(self.str(var, default=default)).strip().lower()
        if value not in choices:
            raise ImproperlyConfigured(
                f"Environment variable {var} must be one of: {', '.join(choices)}."
            )
        return value

    def db_url(
        self,
        var: str = "DATABASE_URL",
        default: Any = environ.Env.NOTSET,
        engine: str | None = None,
    ) -> dict[str, Any]:
        message = (
            f"Environment variable {var} is not a valid database URL "
            "(expected postgres://user:password@host:port/dbname; Playbook needs PostgreSQL)."
        )
        try:
            config = super().db_url(var, default=default, engine=engine)
        except ImproperlyConfigured:
            raise
        except Exception:
            raise ImproperlyConfigured(message) from None
        if config.get("ENGINE") != "django.db.backends.postgresql" or not config.get("NAME"):
            raise ImproperlyConfigured(message)
        return config

    def rate(self, var: str, default: str) -> str:
        """A request rate such as `120/min` (config.env.parse_rate), checked at startup."""
        value = str(self.str(var, default=default)).strip()
        try:
            parse_rate(value)
        except ValueError:
            raise ImproperlyConfigured(
                f"Environment variable {var} must be a rate like 120/min "
                "(a positive number of requests per s, min, h or day)."
            ) from None
        return value


@dataclass(frozen=True)
class Rate:
    """`requests` per `seconds`, written `120/min` (periods: s, min, h, day)."""

    requests: int
    seconds: int


_PERIODS = {
    **dict.fromkeys(("s", "sec", "second"), 1),
    **dict.fromkeys(("m", "min", "minute"), 60),
    **dict.fromkeys(("h", "hour"), 3600),
    **dict.fromkeys(("d", "day"), 86400),
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


def parse_rate(value: str) -> Rate:
    match = _RATE.match(value.lower())
    if match is None or match[2] not in _PERIODS or int(match[1]) < 1:
        raise ValueError(f"{value!r} is not a rate like 120/min (periods: s, min, h, day).")
    return Rate(requests=int(match[1]), seconds=_PERIODS[match[2]])
