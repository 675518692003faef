"""Verify a tenant's live audit log: hash chain, chain head and signed checkpoints.

    manage.py audit_verify --tenant acme

Exits 1 and names the first bad event when the log was altered.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from audit.actions import audit_operator
from audit.export import verify_tenant_log
from tenants.management.base import TenantCommand


class Command(TenantCommand):
    help = "Verify a tenant's audit log (chain, head, signed checkpoints)."

    def handle(self, *args: Any, **options: Any) -> None:
        with audit_operator():
            result = verify_tenant_log()
        if not result.ok:
            for problem in result.problems:
                self.stderr.write(f"  {problem}")
            raise CommandError(
                f"The audit log of {self.tenant.slug} is NOT intact: {result.problems[0]}"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"The audit log of {self.tenant.slug} is intact: {result.count} events, "
                "chain, head and signed checkpoints verified."
            )
        )
