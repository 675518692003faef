"""Export a tenant's audit log as signed JSON Lines.

    manage.py audit_export --tenant acme [--from 2026-11-01] [--to 2026-12-01] [--out FILE]

Verify it anywhere with `python3 audit/verify_export.py FILE --public-key KEY.json`, the key
being the JSON served at /.well-known/playbook-audit-key (or `--print-public-key`).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from audit import signing
from audit.actions import audit_operator, record_audit_event
from audit.export import create_checkpoint, iter_export
from tenants.management.base import TenantCommand


def parse_moment(value: str | None, option: str) -> datetime | None:
    if not value:
        return None
    moment = parse_datetime(value) or parse_datetime(f"{value}T00:00:00+00:00")
    if moment is None:
        raise CommandError(f"{option} must be a date or ISO 8601 date-time (got {value!r}).")
    if moment.tzinfo is None:
        raise CommandError(f"{option} needs a time zone, e.g. {value}+00:00.")
    return moment


class Command(TenantCommand):
    help = "Export a tenant's audit log as signed JSON Lines."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--from", dest="start", help="Events at or after (ISO 8601).")
        parser.add_argument("--to", dest="end", help="Events before (ISO 8601).")
        parser.add_argument("--out", help="Write here instead of standard output.")
        parser.add_argument(
            "--print-public-key",
            action="store_true",
            help="Print the public key document (for verify_export.py) and exit.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["print_public_key"]:
            self.stdout.write(json.dumps(signing.public_jwks(), indent=2))
            return
        start = parse_moment(options["start"], "--from")
        end = parse_moment(options["end"], "--to")
        if start and end and start >= end:
            raise CommandError("--from must be before --to.")
        with audit_operator():
            record_audit_event(
                "audit.exported",
                context={
                    "from": options["start"] or "",
                    "to": options["end"] or "",
                    "by": "manage.py audit_export",
                },
            )
            create_checkpoint()
            out = open(options["out"], "wb") if options["out"] else sys.stdout.buffer  # noqa: SIM115
            try:
                for line in iter_export(start, end):
                    out.write(line)
            finally:
                if options["out"]:
                    out.close()
        if options["out"]:
            self.stderr.write(f"Wrote {options['out']}")
