"""The function behind every tenant table's `support_session_access` policy.

It returns the tenant of the support session named by `app.support_session`, while that
session is neither ended nor expired (checked at every statement); NULL otherwise. It runs
as the caller (the runtime role), and reads accounts_supportsession through that table's
own `support_session_self` policy. plpgsql, so the table may be created after it; a fixed
search_path keeps a temporary table from shadowing the real one.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]

    operations = [
        migrations.RunSQL(
            sql="""
            CREATE FUNCTION playbook_support_tenant() RETURNS uuid
            LANGUAGE plpgsql STABLE
            SET search_path = public, pg_temp
            AS $$
            DECLARE
                session_id uuid := NULLIF(current_setting('app.support_session', true), '')::uuid;
                session_tenant uuid;
            BEGIN
                IF session_id IS NULL THEN
                    RETURN NULL;
                END IF;
                SELECT s.tenant_id INTO session_tenant
                  FROM accounts_supportsession s
                 WHERE s.id = session_id AND s.ended_at IS NULL AND s.expires_at > now();
                RETURN session_tenant;
            END $$;
            """,
            reverse_sql="DROP FUNCTION IF EXISTS playbook_support_tenant();",
        ),
    ]
