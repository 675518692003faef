"""People are tenant data: `accounts_user` under row-level security.

- tenant_users: a tenant's people, in that tenant's verified context (or a support session
  for it). No other tenant's, and no platform staff.
- platform_staff: accounts without a tenant (platform staff; the development provider's
  directory), only in a verified platform context.
- directory: every account, only for the development identity provider's own requests
  (`Principal("directory")`, signed by the app when DEV_IDP mounts it; production refuses
  DEV_IDP).

Not FORCEd: the owner role's functions (playbook_enter, audit_record_event) read it to verify
principals and label audit events. Before a tenant is known (a session's user, an OIDC
subject, a username at the admin's password step) the app reads one account through
`playbook_lookup_user(token)`, which needs a lookup signed by the app: SQL run as the
runtime role cannot sign one, so it cannot list anyone.
"""

from django.conf import settings
from django.db import migrations
from psycopg import sql

USER_RLS_SQL = r"""
CREATE FUNCTION public.playbook_context_directory() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((public.playbook_context_parts())[4] = 'directory', false);
END $$;
REVOKE ALL ON FUNCTION public.playbook_context_directory() FROM PUBLIC;

ALTER TABLE public.accounts_user ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_users ON public.accounts_user AS PERMISSIVE FOR ALL TO PUBLIC
    USING (tenant_id = public.playbook_context_tenant())
    WITH CHECK (tenant_id = public.playbook_context_tenant());
CREATE POLICY platform_staff ON public.accounts_user AS PERMISSIVE FOR ALL TO PUBLIC
    USING (tenant_id IS NULL AND public.playbook_context_platform())
    WITH CHECK (tenant_id IS NULL AND public.playbook_context_platform());
CREATE POLICY directory ON public.accounts_user AS PERMISSIVE FOR ALL TO PUBLIC
    USING (public.playbook_context_directory())
    WITH CHECK (public.playbook_context_directory());

-- One account, for a lookup the app signed: 'v1|kid|lookup|id|<pk>|expiry|nonce|mac',
-- 'v1|kid|lookup|oidc|<issuer> <subject>|…' or 'v1|kid|lookup|username|<name>|…'.
CREATE FUNCTION public.playbook_lookup_user(p_token text)
RETURNS SETOF public.accounts_user
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_parts text[] := string_to_array(p_token, '|');
    v_value text;
BEGIN
    IF array_length(v_parts, 1) IS DISTINCT FROM 8 OR v_parts[1] <> 'v1'
       OR v_parts[3] <> 'lookup'
       OR public.playbook_app_mac(array_to_string(v_parts[1:7], '|'), v_parts[2])
          IS DISTINCT FROM v_parts[8]
       OR v_parts[6] !~ '^[0-9]{1,12}$'
       OR to_timestamp(v_parts[6]::bigint) < clock_timestamp() THEN
        RAISE EXCEPTION 'playbook_lookup_user needs a lookup signed by the app'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_value := convert_from(decode(v_parts[5], 'base64'), 'UTF8');
    IF v_parts[4] = 'id' THEN
        RETURN QUERY SELECT u.* FROM public.accounts_user u WHERE u.id = v_value::bigint;
    ELSIF v_parts[4] = 'oidc' THEN
        RETURN QUERY SELECT u.* FROM public.accounts_user u
         WHERE u.oidc_issuer = split_part(v_value, ' ', 1)
           AND u.oidc_subject = substr(v_value, length(split_part(v_value, ' ', 1)) + 2)
           AND u.oidc_subject <> '';
    ELSIF v_parts[4] = 'username' THEN
        RETURN QUERY SELECT u.* FROM public.accounts_user u WHERE u.username = v_value;
    END IF;
END $$;
REVOKE ALL ON FUNCTION public.playbook_lookup_user(text) FROM PUBLIC;
"""

REVERSE_SQL = r"""
DROP FUNCTION IF EXISTS public.playbook_lookup_user(text);
DROP POLICY IF EXISTS directory ON public.accounts_user;
DROP POLICY IF EXISTS platform_staff ON public.accounts_user;
DROP POLICY IF EXISTS tenant_users ON public.accounts_user;
ALTER TABLE public.accounts_user DISABLE ROW LEVEL SECURITY;
DROP FUNCTION IF EXISTS public.playbook_context_directory();
"""


def grant_runtime_role(apps, schema_editor):
    runtime = sql.Identifier(settings.DATABASES["default"]["USER"])
    with schema_editor.connection.cursor() as cursor:
        for statement in (
            "GRANT EXECUTE ON FUNCTION public.playbook_context_directory() TO {role}",
            "GRANT EXECUTE ON FUNCTION public.playbook_lookup_user(text) TO {role}",
        ):
            cursor.execute(sql.SQL(statement).format(role=runtime))


class Migration(migrations.Migration):
    dependencies = [("accounts", "0005_verified_context")]

    operations = [
        migrations.RunSQL(USER_RLS_SQL, REVERSE_SQL),
        migrations.RunPython(grant_runtime_role, migrations.RunPython.noop),
    ]
