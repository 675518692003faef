"""An invitation link is verified before anything about an organisation is shown.

`playbook_open_invitation(token)` answers one question -- is this link an open invitation
(not expired, revoked or used), and of which tenant -- from the link itself: it hashes the
token as the app stores it (SHA-256) and looks for that hash in the tenant the link names.
Whoever calls it needs the link's secret, so SQL run as the runtime role learns nothing it
could not learn by opening the link. It works inside another tenant's context (a signed-in
member of tenant A opening a link to tenant B), where the app cannot enter B: it binds B's
context as the system for its one read, then puts the caller's bound context back exactly
as it was (the same string: the binding is to this backend and this transaction).
"""

from django.conf import settings
from django.db import migrations
from psycopg import sql

OPEN_INVITATION_SQL = r"""
CREATE FUNCTION public.playbook_open_invitation(p_token text) RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_saved text := coalesce(current_setting('playbook.context', true), '');
    v_tenant uuid;
    v_kid text;
    v_found uuid;
BEGIN
    -- The link's shape (accounts.actions.invite): inv_<tenant hex>_<token_urlsafe secret>.
    IF p_token IS NULL OR p_token !~ '^inv_[0-9a-f]{32}_[A-Za-z0-9_-]{20,128}$' THEN
        RETURN NULL;
    END IF;
    v_tenant := substr(p_token, 5, 32)::uuid;
    SELECT k.kid INTO v_kid FROM public.playbook_context_keys k ORDER BY k.installed_at DESC
     LIMIT 1;
    IF v_kid IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM public.playbook_bind_context(
        'v1|' || v_kid || '|' || v_tenant::text || '|system||0|invitation', v_kid);
    SELECT i.tenant_id INTO v_found
      FROM public.accounts_invitation i
     WHERE i.tenant_id = v_tenant
       AND i.token_hash = encode(sha256(convert_to(p_token, 'UTF8')), 'hex')
       AND i.accepted_at IS NULL AND i.revoked_at IS NULL
       AND i.expires_at > clock_timestamp();
    PERFORM set_config('playbook.context', v_saved, true);
    RETURN v_found;
END $$;
REVOKE ALL ON FUNCTION public.playbook_open_invitation(text) FROM PUBLIC;
"""


def grant_runtime_role(apps, schema_editor):
    runtime = sql.Identifier(settings.DATABASES["default"]["USER"])
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                "GRANT EXECUTE ON FUNCTION public.playbook_open_invitation(text) TO {role}"
            ).format(role=runtime)
        )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0008_second_factor_rls")]

    operations = [
        migrations.RunSQL(
            OPEN_INVITATION_SQL,
            "DROP FUNCTION IF EXISTS public.playbook_open_invitation(text);",
        ),
        migrations.RunPython(grant_runtime_role, migrations.RunPython.noop),
    ]
