"""The verified tenant context (DESIGN.md invariant 4; README "The tenant boundary").

What the policies trust must be something the runtime role cannot fabricate. The app signs
the context (tenant, principal, expiry) with a key that only the owner role can read in the
database; `playbook_enter(token)` (accounts migration 0005) verifies that signature and the
principal, then stores the context *bound* to this backend and this transaction with a
second MAC. Every policy calls `playbook_context_tenant()`, which re-verifies the bound
context and returns its tenant -- NULL for a forged, expired, absent, other-backend or
other-transaction context.

- playbook_context_keys: the app's HMAC keys by key id, stored as the two padded keys of
  RFC 2104 (key XOR ipad, key XOR opad) so that an HMAC costs two sha256() calls. Owner
  only: the runtime role has no privilege on it. Filled by `manage.py install_context_keys`
  (run automatically after every `migrate`).
- playbook_context_parts(): the verified bound context as text[], or NULL.
- playbook_context_tenant(): its tenant; the predicate of every tenant policy.

HMAC-SHA256 is built on the server's own sha256() (no pgcrypto). The functions are
SECURITY DEFINER with a fixed search_path and no EXECUTE for PUBLIC, and PARALLEL RESTRICTED:
a parallel worker has its own backend pid, so the check runs in the leader.
"""

from django.conf import settings
from django.db import migrations
from psycopg import sql

import tenants.migration_ops

CONTEXT_SQL = r"""
CREATE TABLE public.playbook_context_keys (
    kid text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{1,32}$'),
    ipad bytea NOT NULL CHECK (length(ipad) = 64),
    opad bytea NOT NULL CHECK (length(opad) = 64),
    installed_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON public.playbook_context_keys FROM PUBLIC;

-- The bound context: 'v1|kid|tenant|kind|principal|expiry|nonce|pid|xact_start_us|mac'.
CREATE FUNCTION public.playbook_context_parts() RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_value text := current_setting('playbook.context', true);
    v_parts text[];
    v_key record;
BEGIN
    IF v_value IS NULL OR v_value = '' THEN
        RETURN NULL;
    END IF;
    v_parts := string_to_array(v_value, '|');
    IF array_length(v_parts, 1) <> 10
       OR v_parts[8] <> pg_backend_pid()::text
       OR v_parts[9] <> ((extract(epoch FROM now()) * 1000000)::bigint)::text THEN
        RETURN NULL;
    END IF;
    SELECT k.ipad, k.opad INTO v_key FROM public.playbook_context_keys k WHERE k.kid = v_parts[2];
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF encode(sha256(v_key.opad || sha256(v_key.ipad
            || convert_to('bind|' || array_to_string(v_parts[1:9], '|'), 'UTF8'))), 'hex')
       <> v_parts[10] THEN
        RETURN NULL;
    END IF;
    RETURN v_parts;
END $$;

CREATE FUNCTION public.playbook_context_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (public.playbook_context_parts())[3]::uuid;
END $$;

-- Whether the verified context is the platform's (staff, or an operator command, acting on
-- platform tables: tenants, plans, prices, entitlements). Its tenant is the nil uuid.
CREATE FUNCTION public.playbook_context_platform() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((public.playbook_context_parts())[4] = 'platform', false);
END $$;

-- Called by playbook_enter only (never by the runtime role): bind a verified app context
-- to this backend and transaction and store it for the policies.
CREATE FUNCTION public.playbook_bind_context(p_payload text, p_kid text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key record;
    v_bound text;
BEGIN
    SELECT k.ipad, k.opad INTO STRICT v_key FROM public.playbook_context_keys k WHERE k.kid = p_kid;
    v_bound := p_payload || '|' || pg_backend_pid()::text || '|'
        || ((extract(epoch FROM now()) * 1000000)::bigint)::text;
    PERFORM set_config('playbook.context', v_bound || '|' || encode(sha256(v_key.opad
        || sha256(v_key.ipad || convert_to('bind|' || v_bound, 'UTF8'))), 'hex'), true);
END $$;

-- The signature of an app token (what the app computed with the same key), or NULL for an
-- unknown key id.
CREATE FUNCTION public.playbook_app_mac(p_payload text, p_kid text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT encode(sha256(k.opad || sha256(k.ipad || convert_to('app|' || p_payload, 'UTF8'))),
                  'hex')
      FROM public.playbook_context_keys k WHERE k.kid = p_kid
$$;

REVOKE ALL ON FUNCTION public.playbook_context_parts() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.playbook_context_tenant() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.playbook_context_platform() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.playbook_bind_context(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.playbook_app_mac(text, text) FROM PUBLIC;
"""

REVERSE_SQL = r"""
DROP FUNCTION IF EXISTS public.playbook_app_mac(text, text);
DROP FUNCTION IF EXISTS public.playbook_bind_context(text, text);
DROP FUNCTION IF EXISTS public.playbook_context_platform();
DROP FUNCTION IF EXISTS public.playbook_context_tenant();
DROP FUNCTION IF EXISTS public.playbook_context_parts();
DROP TABLE IF EXISTS public.playbook_context_keys;
"""


TENANT_GUARD_SQL = r"""
-- A tenant updates its own row (branding, review policy); plan, status, slug, region and id
-- change only in a verified platform context (or as the owner role, in a migration).
CREATE FUNCTION public.tenants_tenant_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF row_security_active('public.tenants_tenant'::regclass)
       AND NOT public.playbook_context_platform()
       AND (NEW.id, NEW.slug, NEW.plan, NEW.status, NEW.region, NEW.created_at)
           IS DISTINCT FROM (OLD.id, OLD.slug, OLD.plan, OLD.status, OLD.region, OLD.created_at)
    THEN
        RAISE EXCEPTION 'only the platform changes a tenant''s plan, status, slug or region'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION public.tenants_tenant_guard() FROM PUBLIC;
CREATE TRIGGER tenants_tenant_guard BEFORE UPDATE ON public.tenants_tenant
    FOR EACH ROW EXECUTE FUNCTION public.tenants_tenant_guard();
"""


def grant_runtime_role(apps, schema_editor):
    """The runtime role may call the policy function (policies run as the querying role)
    but nothing else here; the default privileges granted it DML on the key table."""
    runtime = sql.Identifier(settings.DATABASES["default"]["USER"])
    with schema_editor.connection.cursor() as cursor:
        for statement in (
            "REVOKE ALL ON public.playbook_context_keys FROM {role}",
            # Sessions live in Redis (accounts/sessions.py): nothing here for tenant traffic.
            "REVOKE ALL ON public.django_session FROM {role}",
            "REVOKE ALL ON FUNCTION public.playbook_bind_context(text, text) FROM {role}",
            "REVOKE ALL ON FUNCTION public.playbook_app_mac(text, text) FROM {role}",
            "GRANT EXECUTE ON FUNCTION public.playbook_context_parts() TO {role}",
            "GRANT EXECUTE ON FUNCTION public.playbook_context_tenant() TO {role}",
            "GRANT EXECUTE ON FUNCTION public.playbook_context_platform() TO {role}",
        ):
            cursor.execute(sql.SQL(statement).format(role=runtime))


class Migration(migrations.Migration):
    dependencies = [("tenants", "0005_tenant_branding"), ("sessions", "0001_initial")]

    operations = [
        migrations.RunSQL(sql=CONTEXT_SQL, reverse_sql=REVERSE_SQL),
        migrations.RunPython(grant_runtime_role, migrations.RunPython.noop),
        tenants.migration_ops.EnablePlatformRLS("tenant", tenant_self_update=True),
        migrations.RunSQL(
            TENANT_GUARD_SQL,
            "DROP TRIGGER IF EXISTS tenants_tenant_guard ON public.tenants_tenant; "
            "DROP FUNCTION IF EXISTS public.tenants_tenant_guard();",
        ),
        tenants.migration_ops.EnableTenantRLS("tenantdatakey"),
        tenants.migration_ops.EnableTenantRLS("credential"),
    ]
