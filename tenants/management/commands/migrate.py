"""`manage.py migrate` runs as the owner role (the "owner" database alias) by default.

The runtime role the app connects as cannot create or alter tables, by design.
"""

from django.core.management.base import CommandParser
from django.core.management.commands.migrate import Command as MigrateCommand


class Command(MigrateCommand):
    help = MigrateCommand.help + " Runs as the owner role (DATABASE_OWNER_URL) by default."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.set_defaults(database="owner")
