"""`manage.py install_context_keys`: put TENANT_CONTEXT_KEYS into the database.

Runs as the owner role (the runtime role cannot read or write the key table). `migrate`
does it too, after every run; this command is for a key rotation without a migration.
"""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tenants.context_keys import install_context_keys


class Command(BaseCommand):
    help = "Install the tenant-context signing keys (TENANT_CONTEXT_KEYS) as the owner role."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="owner")

    def handle(self, *args: Any, **options: Any) -> None:
        kids = install_context_keys(options["database"])
        self.stdout.write(f"Installed tenant-context keys: {', '.join(kids)} (signing: {kids[0]}).")
