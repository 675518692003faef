"""Create a platform staff account for the support admin (replaces `createsuperuser`, which
writes accounts outside any context and is refused by row-level security).

    manage.py create_staff --username sam@example.com --email sam@example.com [--superuser]

The password is read from the terminal, or from STAFF_PASSWORD when there is none. The new
account sets up TOTP at /admin/enroll/ before the admin opens.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts.models import User
from accounts.queries import find_user
from tenants.context import platform_context


class Command(BaseCommand):
    help = "Create a platform staff account (password + TOTP) for the support admin."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument("--superuser", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"].strip()
        if not username:
            raise CommandError("--username must not be empty.")
        if find_user("username", username) is not None:
            raise CommandError(f"An account named {username!r} already exists.")
        password = os.environ.get("STAFF_PASSWORD", "")
        if not password:
            if not sys.stdin.isatty():
                raise CommandError("No terminal for the password: set STAFF_PASSWORD.")
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The passwords differ.")
        staff = User(
            username=username,
            email=options["email"],
            is_staff=True,
            is_superuser=options["superuser"],
        )
        try:
            validate_password(password, staff)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        staff.set_password(password)
        with transaction.atomic(), platform_context():  # staff accounts are platform rows
            staff.save()
        self.stdout.write(
            f"Created staff account {username}: set up TOTP at /admin/enroll/ before signing in."
        )
