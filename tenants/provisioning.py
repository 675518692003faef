"""Database roles and grants for the two-role model (DESIGN.md, invariant 3).

Runs as a PostgreSQL administrator (a superuser, or `rds_superuser` on RDS), before any
migration: it creates the owner role (owns the schema, runs migrations) and the runtime
role (what the app connects as: NOSUPERUSER, NOBYPASSRLS, owns nothing), the database, the
pgvector extension and the default privileges that give the runtime role DML on the
tables the owner creates later. Pure psycopg, no Django, so that the dev/test launcher can
call it before settings exist. `manage.py provision_database` is the operator's entry point.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

import psycopg
from psycopg import sql

#: Databases every cluster has, open to PUBLIC by default.
MAINTENANCE_DATABASES = ("postgres", "template1")


@dataclass(frozen=True)
class RoleSpec:
    name: str
    password: str


def _ensure_role(cur: psycopg.Cursor, role: RoleSpec) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role.name])
    verb = "ALTER" if cur.fetchone() else "CREATE"
    cur.execute(
        sql.SQL(
            "{verb} ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE "
            "NOREPLICATION PASSWORD {password}"
        ).format(
            verb=sql.SQL(verb),
            name=sql.Identifier(role.name),
            password=sql.Literal(role.password),
        )
    )


def provision(
    admin_dsn: str,
    *,
    database: str,
    owner: RoleSpec,
    runtime: RoleSpec,
    recreate: bool = False,
) -> None:
    """Create (or bring up to date) the roles, the database and its privileges. Idempotent."""
    if owner.name == runtime.name:
        raise ValueError("The owner role and the runtime role must be different roles.")
    with psycopg.connect(admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
        _ensure_role(cur, owner)
        _ensure_role(cur, runtime)
        # The runtime role must never inherit the owner's rights.
        cur.execute(
            "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
            [owner.name, runtime.name],
        )
        if cur.fetchone():
            cur.execute(
                sql.SQL("REVOKE {owner} FROM {runtime}").format(
                    owner=sql.Identifier(owner.name), runtime=sql.Identifier(runtime.name)
                )
            )
        if recreate:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {db} WITH (FORCE)").format(
                    db=sql.Identifier(database)
                )
            )
        # The runtime role connects to its own database only (the check tenants.E018): the
        # administrator's databases grant CONNECT to PUBLIC out of the box.
        for maintenance in MAINTENANCE_DATABASES:
            cur.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s AND datallowconn", [maintenance]
            )
            if cur.fetchone() and maintenance != database:
                # A managed service's own database may refuse: the check names it then.
                with suppress(psycopg.errors.InsufficientPrivilege):
                    cur.execute(
                        sql.SQL("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC").format(
                            db=sql.Identifier(maintenance)
                        )
                    )
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
        if not cur.fetchone():
            cur.execute(
                sql.SQL(
                    "CREATE DATABASE {db} OWNER {owner} TEMPLATE template0 ENCODING 'UTF8'"
                ).format(db=sql.Identifier(database), owner=sql.Identifier(owner.name))
            )

    database_dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=database)
    with psycopg.connect(database_dsn, autocommit=True) as conn, conn.cursor() as cur:
        ids = {
            "db": sql.Identifier(database),
            "owner": sql.Identifier(owner.name),
            "runtime": sql.Identifier(runtime.name),
        }
        statements = [
            # pgvector is not a trusted extension: only an administrator can create it.
            "CREATE EXTENSION IF NOT EXISTS vector",
            "ALTER DATABASE {db} OWNER TO {owner}",
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC",
            # CONNECT only: no TEMPORARY, so no temporary table can shadow a real one.
            "REVOKE TEMPORARY ON DATABASE {db} FROM {runtime}",
            "GRANT CONNECT ON DATABASE {db} TO {runtime}",
            "GRANT ALL ON DATABASE {db} TO {owner}",
            # Unqualified names never resolve to pg_temp first (the app qualifies its own).
            "ALTER ROLE {runtime} IN DATABASE {db} SET search_path = public, pg_temp",
            "ALTER SCHEMA public OWNER TO {owner}",
            "REVOKE ALL ON SCHEMA public FROM PUBLIC",
            "GRANT USAGE ON SCHEMA public TO {runtime}",
            # Tables the owner creates later give the runtime role DML only: no TRUNCATE
            # (it ignores row-level security), no REFERENCES, no TRIGGER, no DDL.
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {runtime}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            "GRANT USAGE, SELECT ON SEQUENCES TO {runtime}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            "REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC",
            # Functions: nobody by default; migrations grant each the runtime role may call.
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            "REVOKE EXECUTE ON FUNCTIONS FROM {runtime}",
        ]
        for statement in statements:
            cur.execute(sql.SQL(statement).format(**ids))
