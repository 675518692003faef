"""Audit events are facts, not claims (DESIGN.md invariant 9).

- audit_record_event takes the tenant, the actor and the support session from the verified
  context (tenants migration 0006), never from its arguments: a user's request is recorded
  as that user, an API key as that key, support staff as themselves with their session and
  its reason. Only the system's own contexts (Celery tasks, commands) name their actor, and
  only as `system` or `agent`.
- The context JSON is canonicalised here (`audit_canonical_json`, the same form as
  audit/verify_export.py's `canonical_json`), so no caller can store one text and hash
  another; numbers must be integers (the canonical form carries no floats).
- Reading: one policy whose USING calls `playbook_audit_tenant()`: the tenant, when the
  verified context may read its log (owners and admins, support inside a session, the
  operator commands); writes need the context's tenant.
"""

from django.conf import settings
from django.db import migrations
from psycopg import sql

import tenants.migration_ops

CANONICAL_SQL = r"""
CREATE FUNCTION public.audit_canonical_json(p_value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_type text := jsonb_typeof(p_value);
    v_text text;
BEGIN
    IF v_type = 'object' THEN
        SELECT '{' || coalesce(string_agg(to_json(e.key)::text || ':'
                   || public.audit_canonical_json(e.value), ',' ORDER BY e.key COLLATE "C"), '')
               || '}'
          INTO v_text FROM jsonb_each(p_value) AS e;
        RETURN v_text;
    ELSIF v_type = 'array' THEN
        SELECT '[' || coalesce(string_agg(public.audit_canonical_json(e.value), ','
                   ORDER BY e.ord), '') || ']'
          INTO v_text FROM jsonb_array_elements(p_value) WITH ORDINALITY AS e(value, ord);
        RETURN v_text;
    ELSIF v_type = 'string' THEN
        RETURN to_json(p_value #>> '{}')::text;
    ELSIF v_type = 'number' AND p_value::text !~ '^-?[0-9]+$' THEN
        RAISE EXCEPTION 'audit context numbers must be integers, not %', p_value::text
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_value::text;  -- integers, true, false, null
END $$;
"""

READERS_SQL = r"""
DROP POLICY IF EXISTS audit_readers ON public.audit_auditevent;
DROP FUNCTION IF EXISTS public.playbook_can_read_audit();

-- The tenant whose log the verified context may read, or NULL.
CREATE FUNCTION public.playbook_audit_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ctx text[] := public.playbook_context_parts();
BEGIN
    IF v_ctx IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_ctx[4] IN ('operator', 'support') THEN
        RETURN v_ctx[3]::uuid;
    END IF;
    IF v_ctx[4] = 'user' AND EXISTS (
        SELECT 1 FROM public.accounts_membership m
         WHERE m.tenant_id = v_ctx[3]::uuid AND m.user_id = v_ctx[5]::bigint
           AND m.role IN ('owner', 'admin')
    ) THEN
        RETURN v_ctx[3]::uuid;
    END IF;
    RETURN NULL;
END $$;

DROP POLICY IF EXISTS chain_head_writer ON public.audit_chain_heads;
CREATE POLICY tenant_isolation ON public.audit_chain_heads AS PERMISSIVE FOR ALL TO PUBLIC
    USING (tenant_id = public.playbook_context_tenant())
    WITH CHECK (tenant_id = public.playbook_context_tenant());
"""

RECORD_SQL = r"""
CREATE OR REPLACE FUNCTION public.audit_record_event(
    p_actor_type text, p_actor_id text, p_actor_label text, p_action text,
    p_resource_type text, p_resource_id text, p_request_id text, p_agent_run_id text,
    p_ip inet, p_user_agent text, p_payload_sha256 text, p_context text
) RETURNS TABLE (event_id bigint, event_seq bigint, event_hash text)
LANGUAGE plpgsql SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ctx text[] := public.playbook_context_parts();
    v_tenant uuid;
    v_actor_type text;
    v_actor_id text;
    v_actor_label text;
    v_details jsonb;
    v_seq bigint;
    v_prev text;
    v_created timestamptz := date_trunc('microseconds', clock_timestamp());
    v_id bigint;
    v_doc text;
    v_hash text;
BEGIN
    IF v_ctx IS NULL THEN
        RAISE EXCEPTION 'audit_record_event needs a verified tenant context'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_tenant := v_ctx[3]::uuid;
    IF p_context IS NULL OR jsonb_typeof(p_context::jsonb) <> 'object' THEN
        RAISE EXCEPTION 'audit context must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_details := p_context::jsonb - 'support_session' - 'support_reason';
    -- The actor is the verified principal; only the system's own contexts name theirs.
    IF v_ctx[4] = 'user' THEN
        v_actor_type := 'user';
        v_actor_id := v_ctx[5];
        SELECT u.username INTO v_actor_label FROM public.accounts_user u
         WHERE u.id = v_ctx[5]::bigint;
    ELSIF v_ctx[4] = 'api_key' THEN
        v_actor_type := 'api_key';
        v_actor_id := v_ctx[5];
        SELECT 'API key ' || k.name || ' (' || k.prefix || '…)' INTO v_actor_label
          FROM public.accounts_apikey k WHERE k.id = v_ctx[5]::uuid;
    ELSIF v_ctx[4] = 'support' THEN
        v_actor_type := 'support';
        SELECT u.id::text, u.username, s.reason INTO v_actor_id, v_actor_label, v_doc
          FROM public.accounts_supportsession s JOIN public.accounts_user u ON u.id = s.staff_id
         WHERE s.id = v_ctx[5]::uuid;
        v_details := v_details || jsonb_build_object(
            'support_session', v_ctx[5], 'support_reason', v_doc);
    ELSIF v_ctx[4] = 'staff' THEN
        v_actor_type := 'support';
        v_actor_id := v_ctx[5];
        SELECT u.username INTO v_actor_label FROM public.accounts_user u
         WHERE u.id = v_ctx[5]::bigint;
    ELSIF p_actor_type IN ('system', 'agent') THEN
        v_actor_type := p_actor_type;
        v_actor_id := coalesce(p_actor_id, '');
        v_actor_label := coalesce(p_actor_label, '');
    ELSE
        RAISE EXCEPTION 'a system context records events as system or agent, not %', p_actor_type
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_actor_id := left(coalesce(v_actor_id, ''), 64);
    v_actor_label := left(coalesce(v_actor_label, ''), 255);
    -- One writer per tenant at a time: the chain never forks.
    PERFORM pg_advisory_xact_lock(hashtextextended('audit:' || v_tenant::text, 0));
    INSERT INTO public.audit_chain_heads (tenant_id, seq, hash)
        VALUES (v_tenant, 0, repeat('0', 64))
        ON CONFLICT (tenant_id) DO NOTHING;
    SELECT h.seq, h.hash INTO v_seq, v_prev FROM public.audit_chain_heads h
        WHERE h.tenant_id = v_tenant FOR UPDATE;
    v_seq := v_seq + 1;
    v_doc := '{"action":' || to_json(p_action)::text
        || ',"actor_id":' || to_json(v_actor_id)::text
        || ',"actor_label":' || to_json(v_actor_label)::text
        || ',"actor_type":' || to_json(v_actor_type)::text
        || ',"agent_run_id":' || to_json(p_agent_run_id)::text
        || ',"context":' || public.audit_canonical_json(v_details)
        || ',"created_at":' || to_json(to_char(v_created AT TIME ZONE 'UTC',
                                              'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
        || ',"ip":' || COALESCE(to_json(host(p_ip))::text, 'null')
        || ',"payload_sha256":' || to_json(p_payload_sha256)::text
        || ',"prev_hash":' || to_json(v_prev)::text
        || ',"request_id":' || to_json(p_request_id)::text
        || ',"resource_id":' || to_json(p_resource_id)::text
        || ',"resource_type":' || to_json(p_resource_type)::text
        || ',"seq":' || v_seq::text
        || ',"tenant_id":' || to_json(v_tenant::text)::text
        || ',"user_agent":' || to_json(p_user_agent)::text
        || '}';
    v_hash := encode(sha256(convert_to(v_prev || v_doc, 'UTF8')), 'hex');
    v_id := nextval('public.audit_auditevent_id_seq'::regclass);
    -- No RETURNING: the new row need not be readable by the caller (clients write events
    -- they may not read).
    INSERT INTO public.audit_auditevent (
        id, tenant_id, seq, created_at, actor_type, actor_id, actor_label, action,
        resource_type, resource_id, request_id, agent_run_id, ip, user_agent,
        payload_sha256, context, prev_hash, hash
    ) VALUES (
        v_id, v_tenant, v_seq, v_created, v_actor_type, v_actor_id, v_actor_label, p_action,
        p_resource_type, p_resource_id, p_request_id, p_agent_run_id, p_ip, p_user_agent,
        p_payload_sha256, v_details, v_prev, v_hash
    );
    UPDATE public.audit_chain_heads SET seq = v_seq, hash = v_hash, updated_at = v_created
        WHERE tenant_id = v_tenant;
    RETURN QUERY SELECT v_id, v_seq, v_hash;
END $$;
REVOKE ALL ON FUNCTION public.audit_record_event(text, text, text, text, text, text, text,
    text, inet, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.audit_canonical_json(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.playbook_audit_tenant() FROM PUBLIC;
"""


def grant_runtime_role(apps, schema_editor):
    runtime = sql.Identifier(settings.DATABASES["default"]["USER"])
    with schema_editor.connection.cursor() as cursor:
        for statement in (
            "GRANT EXECUTE ON FUNCTION public.audit_record_event(text, text, text, text, text, "
            "text, text, text, inet, text, text, text) TO {role}",
            "GRANT EXECUTE ON FUNCTION public.playbook_audit_tenant() TO {role}",
            "REVOKE ALL ON FUNCTION public.audit_canonical_json(jsonb) FROM {role}",
        ):
            cursor.execute(sql.SQL(statement).format(role=runtime))


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_hash_chain"),
        ("tenants", "0006_verified_context"),
    ]

    operations = [
        migrations.RunSQL(
            CANONICAL_SQL, "DROP FUNCTION IF EXISTS public.audit_canonical_json(jsonb);"
        ),
        migrations.RunSQL(READERS_SQL, migrations.RunSQL.noop),
        tenants.migration_ops.EnableTenantRLS("auditevent", read_function="playbook_audit_tenant"),
        tenants.migration_ops.EnableTenantRLS("auditcheckpoint"),
        migrations.RunSQL(RECORD_SQL, migrations.RunSQL.noop),
        migrations.RunPython(grant_runtime_role, migrations.RunPython.noop),
    ]
