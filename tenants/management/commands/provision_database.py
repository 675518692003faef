"""Create the owner and runtime roles, the database and its grants, as an administrator.

    DATABASE_ADMIN_URL=postgres://admin@host/postgres manage.py provision_database

Reads the role names and passwords from DATABASE_OWNER_URL and DATABASE_URL. Idempotent.
"""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tenants.provisioning import RoleSpec, provision


class Command(BaseCommand):
    help = "Create the owner/runtime database roles, the database, pgvector and the grants."

    def handle(self, *args: Any, **options: Any) -> None:
        runtime, owner = settings.DATABASES["default"], settings.DATABASES["owner"]
        if runtime["NAME"] != owner["NAME"]:
            raise CommandError("DATABASE_URL and DATABASE_OWNER_URL name different databases.")
        if not settings.DATABASE_ADMIN_URL:
            raise CommandError(
                "Set DATABASE_ADMIN_URL to a role that may create roles and databases."
            )
        provision(
            settings.DATABASE_ADMIN_URL,
            database=runtime["NAME"],
            owner=RoleSpec(owner["USER"], owner["PASSWORD"]),
            runtime=RoleSpec(runtime["USER"], runtime["PASSWORD"]),
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Database {runtime['NAME']!r}: owner role {owner['USER']!r}, "
                f"runtime role {runtime['USER']!r} ready. Now run `manage.py migrate`."
            )
        )
