"""Append-only, hash-chained audit log (DESIGN.md invariant 9).

- audit_record_event(...): the only writer. SECURITY DEFINER (runs as the owner role), takes
  the tenant from the session setting (`app.current_tenant`, or the valid support session's
  tenant), serializes writers per tenant (advisory transaction lock + the chain head row),
  numbers the event and computes `hash = sha256(prev_hash || canonical JSON)`. The
  canonical JSON is built here exactly as audit/verify_export.py builds it.
- audit_chain_heads: the last (seq, hash) per tenant, so the next writer never needs to read
  (and the runtime role never reads) the whole log.
- The runtime role keeps SELECT only; a trigger rejects UPDATE, DELETE and TRUNCATE for
  every role but a superuser.
- Reading is narrowed by a RESTRICTIVE policy: the tenant's owners and admins
  (app.current_user), support inside a valid support session, or an operator command
  (app.audit_operator), on top of the usual tenant policies.
"""

import json

import django.db.models.deletion
import django.db.models.manager
from django.conf import settings
from django.db import migrations, models
from psycopg import sql

import tenants.migration_ops
from audit.verify_export import GENESIS_HASH, chain_hash, event_document

RECORD_FUNCTION = r"""
CREATE FUNCTION audit_record_event(
    p_actor_type text, p_actor_id text, p_actor_label text, p_action text,
    p_resource_type text, p_resource_id text, p_request_id text, p_agent_run_id text,
    p_ip inet, p_user_agent text, p_payload_sha256 text, p_context text
) RETURNS TABLE (event_id bigint, event_seq bigint, event_hash text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_tenant uuid := COALESCE(
        NULLIF(current_setting('app.current_tenant', true), '')::uuid,
        playbook_support_tenant()
    );
    v_seq bigint;
    v_prev text;
    v_created timestamptz := date_trunc('microseconds', clock_timestamp());
    v_id bigint;
    v_doc text;
    v_hash text;
BEGIN
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'audit_record_event needs a tenant context'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_context IS NULL OR jsonb_typeof(p_context::jsonb) <> 'object' THEN
        RAISE EXCEPTION 'audit context must be a JSON object';
    END IF;
    -- One writer per tenant at a time: the chain never forks.
    PERFORM pg_advisory_xact_lock(hashtextextended('audit:' || v_tenant::text, 0));
    INSERT INTO audit_chain_heads (tenant_id, seq, hash)
        VALUES (v_tenant, 0, repeat('0', 64))
        ON CONFLICT (tenant_id) DO NOTHING;
    SELECT seq, hash INTO v_seq, v_prev FROM audit_chain_heads
        WHERE tenant_id = v_tenant FOR UPDATE;
    v_seq := v_seq + 1;
    v_doc := '{"action":' || to_json(p_action)::text
        || ',"actor_id":' || to_json(p_actor_id)::text
        || ',"actor_label":' || to_json(p_actor_label)::text
        || ',"actor_type":' || to_json(p_actor_type)::text
        || ',"agent_run_id":' || to_json(p_agent_run_id)::text
        || ',"context":' || p_context
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
    v_id := nextval(pg_get_serial_sequence('audit_auditevent', 'id'));
    -- No RETURNING: the new row need not be readable by the caller (clients write events
    -- they may not read).
    INSERT INTO audit_auditevent (
        id, tenant_id, seq, created_at, actor_type, actor_id, actor_label, action,
        resource_type, resource_id, request_id, agent_run_id, ip, user_agent,
        payload_sha256, context, prev_hash, hash
    ) VALUES (
        v_id, v_tenant, v_seq, v_created, p_actor_type, p_actor_id, p_actor_label, p_action,
        p_resource_type, p_resource_id, p_request_id, p_agent_run_id, p_ip, p_user_agent,
        p_payload_sha256, p_context::jsonb, v_prev, v_hash
    );
    UPDATE audit_chain_heads SET seq = v_seq, hash = v_hash, updated_at = v_created
        WHERE tenant_id = v_tenant;
    RETURN QUERY SELECT v_id, v_seq, v_hash;
END $$;
"""

SUPPORTING_SQL = r"""
CREATE TABLE audit_chain_heads (
    tenant_id uuid PRIMARY KEY REFERENCES tenants_tenant (id) ON DELETE RESTRICT,
    seq bigint NOT NULL,
    hash text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY chain_head_writer ON audit_chain_heads FOR ALL
    USING (tenant_id = COALESCE(NULLIF(current_setting('app.current_tenant', true), '')::uuid,
                                (SELECT playbook_support_tenant())))
    WITH CHECK (tenant_id = COALESCE(NULLIF(current_setting('app.current_tenant', true), '')::uuid,
                                     (SELECT playbook_support_tenant())));
"""

PROTECTING_SQL = r"""
CREATE FUNCTION audit_reject_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RETURN COALESCE(NEW, OLD);
    END IF;
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

-- Who may read events, on top of the tenant policies (restrictive: AND-ed with them).
CREATE FUNCTION playbook_can_read_audit() RETURNS boolean
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT current_setting('app.audit_operator', true) = 'on'
        OR playbook_support_tenant() IS NOT NULL
        OR EXISTS (
            SELECT 1 FROM accounts_membership m
             WHERE m.user_id = NULLIF(current_setting('app.current_user', true), '')::bigint
               AND m.role IN ('owner', 'admin')
        )
$$;
CREATE POLICY audit_readers ON audit_auditevent AS RESTRICTIVE FOR SELECT
    USING ((SELECT playbook_can_read_audit()));
"""

REVERSE_SUPPORTING_SQL = "DROP TABLE IF EXISTS audit_chain_heads;"
REVERSE_PROTECTING_SQL = r"""
DROP POLICY IF EXISTS audit_readers ON audit_auditevent;
DROP FUNCTION IF EXISTS playbook_can_read_audit();
DROP TRIGGER IF EXISTS audit_no_truncate ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_reject_change();
"""
REVERSE_RECORD_FUNCTION = (
    "DROP FUNCTION IF EXISTS audit_record_event(text, text, text, text, text, text, text, "
    "text, inet, text, text, text);"
)


def backfill_chains(apps, schema_editor):
    """Number and chain events written before the chain existed (development data)."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM tenants_tenant")
        tenant_ids = [row[0] for row in cursor.fetchall()]
        for tenant_id in tenant_ids:
            cursor.execute("SELECT set_config('app.current_tenant', %s, true)", [str(tenant_id)])
            cursor.execute("SELECT set_config('app.audit_operator', 'on', true)")
            cursor.execute(
                "SELECT id, to_char(created_at AT TIME ZONE 'UTC', "
                '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\'), actor_type, actor_id, actor_label, action, '
                "resource_type, resource_id, request_id, host(ip), user_agent, context "
                "FROM audit_auditevent WHERE tenant_id = %s ORDER BY created_at, id",
                [tenant_id],
            )
            prev, seq = GENESIS_HASH, 0
            for row in cursor.fetchall():
                seq += 1
                event = dict(
                    zip(
                        [
                            "id",
                            "created_at",
                            "actor_type",
                            "actor_id",
                            "actor_label",
                            "action",
                            "resource_type",
                            "resource_id",
                            "request_id",
                            "ip",
                            "user_agent",
                            "context",
                        ],
                        row,
                        strict=True,
                    )
                )
                event.update(
                    seq=seq,
                    prev_hash=prev,
                    agent_run_id="",
                    payload_sha256="",
                    tenant_id=str(tenant_id),
                )
                if isinstance(event["context"], str):  # Django loads jsonb as text
                    event["context"] = json.loads(event["context"])
                digest = chain_hash(prev, event_document(event))
                cursor.execute(
                    "UPDATE audit_auditevent SET seq = %s, prev_hash = %s, hash = %s WHERE id = %s",
                    [seq, prev, digest, event["id"]],
                )
                prev = digest
            if seq:
                cursor.execute(
                    "INSERT INTO audit_chain_heads (tenant_id, seq, hash) VALUES (%s, %s, %s)",
                    [tenant_id, seq, prev],
                )
        cursor.execute("SELECT set_config('app.current_tenant', '', true)")


def restrict_runtime_role(apps, schema_editor):
    runtime = settings.DATABASES["default"]["USER"]
    with schema_editor.connection.cursor() as cursor:
        for statement in (
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_auditevent FROM {role}",
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_chain_heads FROM {role}",
            "GRANT SELECT ON audit_chain_heads TO {role}",
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_auditcheckpoint FROM {role}",
            "GRANT INSERT ON audit_auditcheckpoint TO {role}",
        ):
            cursor.execute(sql.SQL(statement).format(role=sql.Identifier(runtime)))


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("accounts", "0002_identity_apikeys_support"),
        ("tenants", "0002_support_session_function"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="auditevent",
            options={"ordering": ["-seq"], "base_manager_name": "all_tenants"},
        ),
        migrations.AlterField(
            model_name="auditevent", name="created_at", field=models.DateTimeField()
        ),
        migrations.AddField(
            model_name="auditevent",
            name="seq",
            field=models.BigIntegerField(
                default=0, help_text="Position in the tenant's chain, from 1."
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="agent_run_id",
            field=models.CharField(blank=True, default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="payload_sha256",
            field=models.CharField(blank=True, default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="prev_hash",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.RunSQL(SUPPORTING_SQL, REVERSE_SUPPORTING_SQL),
        migrations.RunPython(backfill_chains, migrations.RunPython.noop),
        migrations.RunSQL(PROTECTING_SQL, REVERSE_PROTECTING_SQL),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(
                fields=("tenant", "seq"), name="audit_event_tenant_seq"
            ),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["tenant", "actor_type"], name="audit_tenant_actor_idx"),
        ),
        migrations.RunSQL(RECORD_FUNCTION, REVERSE_RECORD_FUNCTION),
        migrations.CreateModel(
            name="AuditCheckpoint",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("seq", models.BigIntegerField()),
                ("hash", models.CharField(max_length=64)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("key_id", models.CharField(max_length=32)),
                ("signature", models.TextField()),
                (
                    "tenant",
                    models.ForeignKey(
                        db_index=False,
                        editable=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
            ],
            options={
                "ordering": ["-seq"],
                "abstract": False,
                "base_manager_name": "all_tenants",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("tenant", "id"), name="audit_auditcheckpoint_tenant_id_id_key"
                    ),
                    models.UniqueConstraint(
                        fields=("tenant", "seq"), name="audit_checkpoint_tenant_seq"
                    ),
                ],
            },
            managers=[
                ("objects", django.db.models.manager.Manager()),
                ("all_tenants", django.db.models.manager.Manager()),
            ],
        ),
        tenants.migration_ops.LegacyTenantRLS("auditcheckpoint"),
        migrations.RunPython(restrict_runtime_role, migrations.RunPython.noop),
    ]
