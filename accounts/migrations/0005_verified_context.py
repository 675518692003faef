"""Enter a tenant with one statement: `playbook_enter(token)`.

It verifies the app's signature on the token (tenants migration 0006), binds the context to
this backend and transaction, and verifies the principal in the same round trip, fresh on
every call (no cache: a deactivation or role change takes effect at the next request):

    user      the account is active, bound to that tenant, the tenant active -> its role
    api_key   the key is that tenant's, not revoked, not expired, the tenant active
    support   the support session is that tenant's, neither ended nor expired, its staff
              member active platform staff
    staff     an active platform staff member acting on the tenant's record (support
              sessions, tenant changes in the admin)
    platform  staff (or an operator command) writing platform tables -- tenants, plans,
              prices, entitlements -- with the nil tenant: no tenant's rows at all
    system    Celery tasks and commands: the tenant exists
    operator  audit export and verification: the tenant exists (the audit log's reader)

Refusals return a code and leave no context (zero rows, no writes). The principal's tables
are read through their policies, so the context is bound before they are read and cleared
again on refusal. The support and staff kinds read `accounts_user` without a tenant: that
table is not FORCEd (the owner, whose functions these are, reads it; the runtime role reads
only its tenant's rows, accounts migration 0006).
"""

from django.conf import settings
from django.db import migrations
from psycopg import sql

import tenants.migration_ops

ENTER_SQL = r"""
CREATE FUNCTION public.playbook_enter(p_token text)
RETURNS TABLE (refusal text, role text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_parts text[] := string_to_array(p_token, '|');
    v_payload text;
    v_tenant uuid;
    v_kind text;
    v_id text;
    v_role text;
    v_ok boolean := false;
BEGIN
    -- Whatever happens below, no earlier context survives this call.
    PERFORM set_config('playbook.context', '', true);
    IF p_token IS NULL OR array_length(v_parts, 1) IS DISTINCT FROM 8 OR v_parts[1] <> 'v1' THEN
        RETURN QUERY SELECT 'malformed'::text, NULL::text;
        RETURN;
    END IF;
    v_payload := array_to_string(v_parts[1:7], '|');
    IF public.playbook_app_mac(v_payload, v_parts[2]) IS DISTINCT FROM v_parts[8] THEN
        RETURN QUERY SELECT 'bad_signature'::text, NULL::text;
        RETURN;
    END IF;
    IF v_parts[6] !~ '^[0-9]{1,12}$' OR to_timestamp(v_parts[6]::bigint) < clock_timestamp() THEN
        RETURN QUERY SELECT 'expired'::text, NULL::text;
        RETURN;
    END IF;
    v_tenant := v_parts[3]::uuid;
    v_kind := v_parts[4];
    v_id := v_parts[5];
    PERFORM public.playbook_bind_context(v_payload, v_parts[2]);

    IF v_kind = 'user' THEN
        SELECT true, m.role INTO v_ok, v_role
          FROM public.accounts_user u
          JOIN public.tenants_tenant t ON t.id = u.tenant_id
          LEFT JOIN public.accounts_membership m
            ON m.tenant_id = u.tenant_id AND m.user_id = u.id
         WHERE u.id = v_id::bigint AND u.tenant_id = v_tenant AND u.is_active
           AND t.status = 'active';
    ELSIF v_kind = 'api_key' THEN
        SELECT true, 'api_key' INTO v_ok, v_role
          FROM public.accounts_apikey k
          JOIN public.tenants_tenant t ON t.id = k.tenant_id
         WHERE k.id = v_id::uuid AND k.tenant_id = v_tenant AND k.revoked_at IS NULL
           AND (k.expires_at IS NULL OR k.expires_at > clock_timestamp())
           AND t.status = 'active';
    ELSIF v_kind = 'support' THEN
        SELECT true INTO v_ok
          FROM public.accounts_supportsession s
          JOIN public.accounts_user u ON u.id = s.staff_id
         WHERE s.id = v_id::uuid AND s.tenant_id = v_tenant AND s.ended_at IS NULL
           AND s.expires_at > clock_timestamp()
           AND u.is_active AND u.is_staff AND u.tenant_id IS NULL;
    ELSIF v_kind = 'staff' THEN
        SELECT true INTO v_ok
          FROM public.accounts_user u, public.tenants_tenant t
         WHERE u.id = v_id::bigint AND u.is_active AND u.is_staff AND u.tenant_id IS NULL
           AND t.id = v_tenant;
    ELSIF v_kind = 'platform' THEN
        -- Platform tables only: the nil tenant, which no tenant has.
        IF v_tenant = '00000000-0000-0000-0000-000000000000'::uuid THEN
            IF v_id = '' THEN
                v_ok := true;  -- an operator command
            ELSE
                SELECT true INTO v_ok FROM public.accounts_user u
                 WHERE u.id = v_id::bigint AND u.is_active AND u.is_staff
                   AND u.tenant_id IS NULL;
            END IF;
        END IF;
    ELSIF v_kind = 'directory' THEN
        -- The development identity provider's own requests (accounts migration 0006).
        v_ok := v_tenant = '00000000-0000-0000-0000-000000000000'::uuid AND v_id = '';
    ELSIF v_kind IN ('system', 'operator') AND v_id = '' THEN
        SELECT true INTO v_ok FROM public.tenants_tenant t WHERE t.id = v_tenant;
    END IF;

    IF NOT coalesce(v_ok, false) THEN
        PERFORM set_config('playbook.context', '', true);
        RETURN QUERY SELECT 'principal_refused'::text, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT NULL::text, v_role;
END $$;
REVOKE ALL ON FUNCTION public.playbook_enter(text) FROM PUBLIC;
DROP FUNCTION IF EXISTS public.playbook_support_tenant();
"""

REVERSE_SQL = "DROP FUNCTION IF EXISTS public.playbook_enter(text);"


def grant_runtime_role(apps, schema_editor):
    runtime = sql.Identifier(settings.DATABASES["default"]["USER"])
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION public.playbook_enter(text) TO {role}").format(
                role=runtime
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_user_session_epoch"),
        ("tenants", "0006_verified_context"),
        # Every legacy policy calls playbook_support_tenant(), dropped here: each app's
        # tables move to the verified policy first.
        ("audit", "0003_verified_context"),
        ("agents", "0005_verified_context"),
        ("billing", "0003_verified_context"),
        ("conversations", "0004_verified_context"),
    ]

    operations = [
        tenants.migration_ops.EnableTenantRLS("membership"),
        tenants.migration_ops.EnableTenantRLS("apikey"),
        tenants.migration_ops.EnableTenantRLS("supportsession"),
        tenants.migration_ops.EnableTenantRLS("invitation"),
        migrations.RunSQL(sql=ENTER_SQL, reverse_sql=REVERSE_SQL),
        migrations.RunPython(grant_runtime_role, migrations.RunPython.noop),
    ]
