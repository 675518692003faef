"""The development provider's tables under row-level security: its directory (`devidp_*`)
and django-oauth-toolkit's clients, grants and live tokens (`oauth2_provider_*`) are read
and written only in the directory context, which the app enters for the provider's own
requests (`devidp.middleware`) and its setup (`ensure_web_client`, `seed_demo`). SQL run as
the runtime role in tenant traffic sees none of them. The tables are found in the catalog,
so every table django-oauth-toolkit ships is covered; the system check (tenants.E017) fails
if a later one is not.
"""

from django.db import migrations
from psycopg import sql

PREFIXES = ("devidp\\_%", "oauth2\\_provider\\_%")


def provider_tables(cursor) -> list[str]:
    cursor.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') "
        "AND (c.relname LIKE %s OR c.relname LIKE %s) ORDER BY 1",
        list(PREFIXES),
    )
    return [row[0] for row in cursor.fetchall()]


def enable(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        for table in provider_tables(cursor):
            ids = {"table": sql.Identifier(table)}
            for statement in (
                "ALTER TABLE public.{table} ENABLE ROW LEVEL SECURITY",
                "DROP POLICY IF EXISTS directory ON public.{table}",
                "CREATE POLICY directory ON public.{table} AS PERMISSIVE FOR ALL TO PUBLIC "
                "USING (public.playbook_context_directory()) "
                "WITH CHECK (public.playbook_context_directory())",
            ):
                cursor.execute(sql.SQL(statement).format(**ids))


def disable(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        for table in provider_tables(cursor):
            ids = {"table": sql.Identifier(table)}
            cursor.execute(
                sql.SQL("DROP POLICY IF EXISTS directory ON public.{table}").format(**ids)
            )
            cursor.execute(
                sql.SQL("ALTER TABLE public.{table} DISABLE ROW LEVEL SECURITY").format(**ids)
            )


class Migration(migrations.Migration):
    dependencies = [
        ("devidp", "0001_initial"),
        ("accounts", "0006_user_rls"),
        ("oauth2_provider", "__latest__"),
    ]

    operations = [migrations.RunPython(enable, disable)]
