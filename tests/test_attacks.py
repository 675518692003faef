"""An attacker with one injectable query, as the runtime role, inside tenant A's request.

Every attack runs on the same connection and in the same transaction as a real request of
Acme's client (`tenant_context(acme, user_id=client)`), as raw SQL, and must end in a
refusal or zero rows of Globex. The same attacks then go through a deliberately injectable
view (tests/injectable.py, mounted only here) over HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.test import Client, override_settings
from django_otp.plugins.otp_totp.models import TOTPDevice
from oauth2_provider.models import get_access_token_model, get_application_model

from audit.actions import audit_operator, record_audit_event
from audit.export import verify_tenant_log
from audit.models import AuditEvent
from billing.models import PlanLimit
from conversations.models import Conversation
from devidp.models import DevIdentity
from tenants.context import (
    Principal,
    TenantContextRefused,
    directory_context,
    platform_context,
    sign_context,
    tenant_context,
)
from tests.conftest import _conninfo
from tests.factories import UserFactory, World, build_world


@pytest.fixture
def acme(db: None) -> World:
    return build_world("acme")


@pytest.fixture
def globex(db: None) -> World:
    return build_world("globex")


@pytest.fixture
def as_acme_client(acme: World) -> Iterator[None]:
    with transaction.atomic(), tenant_context(acme.tenant, user_id=acme.client.pk):
        yield


def rows(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement in a savepoint; a refused statement raises DatabaseError."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def refused(sql: str, params: Any = None) -> bool:
    try:
        rows(sql, params)
    except DatabaseError:
        return True
    return False


def globex_visible(globex: World) -> int:
    found = rows(
        "SELECT count(*) FROM public.conversations_conversation WHERE tenant_id = %s",
        [globex.tenant.id],
    )
    return int(found[0][0])


def bound_context() -> str:
    return str(rows("SELECT current_setting('playbook.context', true)")[0][0])


# --------------------------------------------------------------------------- choosing a tenant


@pytest.mark.parametrize(
    "setting",
    ["app.current_tenant", "app.tenant", "playbook.tenant", "app.support_session"],
)
def test_setting_another_tenant_by_name_admits_nothing(
    acme: World, globex: World, as_acme_client: None, setting: str
) -> None:
    value = str(globex.tenant.id)
    if setting == "app.support_session":
        value = str(globex.conversations[0].id)  # any uuid: sessions are not settings
    rows("SELECT set_config(%s, %s, true)", [setting, value])
    assert globex_visible(globex) == 0
    # ... and the attacker's own tenant still works: the legacy settings are simply ignored.
    assert rows("SELECT count(*) FROM public.conversations_conversation")[0][0] == 2


def test_a_forged_context_admits_nothing(acme: World, globex: World, as_acme_client: None) -> None:
    own = bound_context()
    assert str(acme.tenant.id) in own
    forged = own.replace(str(acme.tenant.id), str(globex.tenant.id))
    rows("SELECT set_config('playbook.context', %s, true)", [forged])
    assert globex_visible(globex) == 0
    assert rows("SELECT count(*) FROM public.conversations_conversation")[0][0] == 0
    assert refused(
        "UPDATE public.conversations_conversation SET title = 'pwned' WHERE tenant_id = %s "
        "RETURNING id",
        [globex.tenant.id],
    ) or not rows(
        "UPDATE public.conversations_conversation SET title = 'pwned' WHERE tenant_id = %s "
        "RETURNING id",
        [globex.tenant.id],
    )


def test_a_context_signed_with_a_guessed_key_is_refused(
    globex: World, as_acme_client: None
) -> None:
    kid = settings.TENANT_CONTEXT_KEYS[0][0]
    payload = f"v1|{kid}|{globex.tenant.id}|system||{int(time.time()) + 60}|00"
    for key in (b"", b"secret", settings.SECRET_KEY.encode(), b"\0" * 32):
        mac = hmac.new(key, f"app|{payload}".encode(), hashlib.sha256).hexdigest()
        assert rows("SELECT refusal FROM public.playbook_enter(%s)", [f"{payload}|{mac}"]) == [
            ("bad_signature",)
        ]
        assert globex_visible(globex) == 0


def test_the_signing_machinery_is_out_of_reach(as_acme_client: None) -> None:
    assert refused("SELECT * FROM public.playbook_context_keys")
    assert refused("SELECT public.playbook_app_mac('v1|x', 'k')")
    assert refused("SELECT public.playbook_bind_context('v1|x', 'k')")
    assert refused("INSERT INTO public.playbook_context_keys VALUES ('evil', '', '')")
    assert refused("SELECT public.audit_canonical_json('{}'::jsonb)")


def test_a_context_from_an_earlier_transaction_is_refused(live_db: None) -> None:
    # A pooled connection: a context captured in one transaction, replayed in the next.
    acme = build_world("acme")
    with transaction.atomic(), tenant_context(acme.tenant, user_id=acme.owner.pk):
        captured = bound_context()
    with transaction.atomic():
        rows("SELECT set_config('playbook.context', %s, true)", [captured])
        assert rows("SELECT count(*) FROM public.conversations_conversation")[0][0] == 0
        assert rows("SELECT public.playbook_context_tenant()") == [(None,)]


def test_a_context_replayed_on_another_backend_is_refused(live_db: None) -> None:
    acme = build_world("acme")
    with transaction.atomic(), tenant_context(acme.tenant, user_id=acme.owner.pk):
        captured = bound_context()
        assert rows("SELECT count(*) FROM public.conversations_conversation")[0][0] == 2
        with psycopg.connect(_conninfo("default")) as other:
            other.execute("SELECT set_config('playbook.context', %s, true)", [captured])
            assert other.execute(
                "SELECT count(*) FROM public.conversations_conversation"
            ).fetchone() == (0,)


def test_an_expired_or_malformed_app_token_is_refused(acme: World) -> None:
    expired = sign_context(acme.tenant.id, Principal.user(acme.owner.pk), ttl=-1)
    with transaction.atomic():
        assert rows("SELECT refusal FROM public.playbook_enter(%s)", [expired]) == [("expired",)]
        for junk in ("", "v1", "v2|a|b|c|d|e|f|g", expired + "|extra", None):
            assert rows("SELECT refusal FROM public.playbook_enter(%s)", [junk]) == [("malformed",)]
        assert rows("SELECT public.playbook_context_tenant()") == [(None,)]


def test_a_valid_token_for_the_wrong_principal_is_refused(acme: World, globex: World) -> None:
    # Signed by the app, but the principal does not belong to the tenant it names.
    token = sign_context(globex.tenant.id, Principal.user(acme.owner.pk))
    with transaction.atomic():
        assert rows("SELECT refusal FROM public.playbook_enter(%s)", [token]) == [
            ("principal_refused",)
        ]
        assert rows("SELECT public.playbook_context_tenant()") == [(None,)]


def test_a_deactivated_user_cannot_enter_at_the_next_request(acme: World) -> None:
    with tenant_context(acme.tenant, user_id=acme.consultant.pk):
        pass
    people = type(acme.consultant).objects.filter(pk=acme.consultant.pk)
    assert people.update(is_active=False) == 0  # outside the tenant: nobody to change
    with tenant_context(acme.tenant):
        assert people.update(is_active=False) == 1
    with (
        pytest.raises(TenantContextRefused, match="principal_refused"),
        tenant_context(acme.tenant, user_id=acme.consultant.pk),
    ):
        pass


# --------------------------------------------------------------------------- platform tables


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO public.tenants_tenant (id, slug, name, plan, region, status, "
        "review_policy, brand_color, created_at, updated_at) VALUES (gen_random_uuid(), "
        "'evil', 'Evil', 'enterprise', 'eu', 'active', 'auto_send', '#000000', now(), now())",
        "UPDATE public.tenants_tenant SET plan = 'enterprise' WHERE slug = 'globex' RETURNING id",
        "UPDATE public.tenants_tenant SET name = 'pwned' WHERE slug = 'globex' RETURNING id",
        "DELETE FROM public.tenants_tenant WHERE slug = 'globex' RETURNING id",
        "UPDATE public.billing_planlimit SET hard_cap_microdollars = 0 RETURNING plan",
        "UPDATE public.billing_modelprice SET input_per_million = 0, output_per_million = 0, "
        "per_call = 0 RETURNING name",
        "DELETE FROM public.billing_modelprice RETURNING name",
        "INSERT INTO public.billing_planlimit (plan, requests_per_minute, "
        "user_requests_per_minute, tokens_per_minute, soft_cap_microdollars, "
        "hard_cap_microdollars) VALUES ('evil', 0, 0, 0, 0, 0) RETURNING plan",
        "UPDATE public.agents_planentitlement SET plan = 'starter' RETURNING id",
    ],
    ids=[
        "create-tenant",
        "move-other-tenant-plan",
        "retitle-other-tenant",
        "delete-tenant",
        "zero-caps",
        "zero-prices",
        "delete-prices",
        "add-plan",
        "grant-entitlements",
    ],
)
def test_platform_tables_refuse_writes_outside_a_verified_platform_context(
    acme: World, globex: World, as_acme_client: None, statement: str
) -> None:
    for claim in ("app.platform", "playbook.context"):
        rows("SELECT set_config(%s, 'platform', true)", [claim])
    assert refused(statement) or rows(statement) == []


def test_a_tenant_cannot_move_its_own_plan_but_may_brand_itself(
    acme: World, as_acme_client: None
) -> None:
    assert refused(
        "UPDATE public.tenants_tenant SET plan = 'enterprise' WHERE id = %s", [acme.tenant.id]
    )
    assert refused(
        "UPDATE public.tenants_tenant SET status = 'active', slug = 'x' WHERE id = %s",
        [acme.tenant.id],
    )
    assert rows(
        "UPDATE public.tenants_tenant SET brand_color = '#123456' WHERE id = %s RETURNING id",
        [acme.tenant.id],
    ) == [(acme.tenant.id,)]


def test_only_the_app_writes_platform_rows(acme: World) -> None:
    with platform_context():
        assert PlanLimit.objects.filter(plan="starter").update(requests_per_minute=7) == 1
    assert PlanLimit.objects.filter(plan="starter").update(requests_per_minute=8) == 0
    assert PlanLimit.objects.get(plan="starter").requests_per_minute == 7
    # A platform context sees no tenant's rows.
    with platform_context():
        assert rows("SELECT count(*) FROM public.conversations_conversation") == [(0,)]


def test_no_temporary_table_can_shadow_a_real_one(acme: World, as_acme_client: None) -> None:
    assert refused("CREATE TEMP TABLE accounts_membership (user_id bigint, role text)")
    assert refused("CREATE TABLE public.accounts_membership_shadow (id int)")
    assert rows("SHOW search_path") == [("public, pg_temp",)]


def test_sessions_are_not_in_the_database(as_acme_client: None) -> None:
    assert refused("SELECT session_key, session_data FROM public.django_session")
    assert refused("INSERT INTO public.django_session VALUES ('k', 'd', now())")


# --------------------------------------------------------------------------- people


def test_people_of_other_tenants_and_staff_are_out_of_reach(
    acme: World, globex: World, as_acme_client: None
) -> None:
    staff = UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)
    seen = {row[0] for row in rows("SELECT username FROM public.accounts_user")}
    assert seen == {
        acme.owner.username,
        acme.consultant.username,
        acme.client.username,
        acme.other_client.username,
    }
    assert rows("SELECT count(*) FROM public.accounts_user WHERE tenant_id IS NULL") == [(0,)]
    # Create a staff account, bind someone into another tenant, take over globex's owner.
    assert refused(
        "INSERT INTO public.accounts_user (password, is_superuser, username, first_name, "
        "last_name, email, is_staff, is_active, date_joined, oidc_issuer, oidc_subject, "
        "session_epoch) VALUES ('', true, 'evil', '', '', '', true, true, now(), '', '', 0)"
    )
    assert refused(
        "UPDATE public.accounts_user SET tenant_id = %s WHERE id = %s",
        [globex.tenant.id, acme.client.pk],
    )
    assert (
        rows(
            "UPDATE public.accounts_user SET is_staff = true WHERE id IN (%s, %s) RETURNING id",
            [globex.owner.pk, staff.pk],
        )
        == []
    )
    # Staff second factors: TOTP secrets and backup-code digests are platform rows.
    with platform_context():
        TOTPDevice.objects.create(user=staff, name="phone", confirmed=True)
        assert TOTPDevice.objects.count() == 1
    for table in ("otp_totp_totpdevice", "otp_static_staticdevice", "otp_static_statictoken"):
        assert rows(f"SELECT count(*) FROM public.{table}") == [(0,)]
    assert rows("UPDATE public.otp_totp_totpdevice SET key = '00' RETURNING id") == []
    # The signed lookup answers only the app.
    for forged in ("", "v1|k|lookup|id|MQ==|9999999999|00|" + "0" * 64):
        assert refused("SELECT * FROM public.playbook_lookup_user(%s)", [forged])


def test_the_development_providers_tokens_are_out_of_reach(acme: World) -> None:
    """In development the local provider's live tokens sit in the same database: only its own
    requests (the directory context) read them."""
    Application, AccessToken = get_application_model(), get_access_token_model()
    with directory_context():
        app = Application.objects.create(
            name="Mobile",
            client_id="mobile",
            client_type=Application.CLIENT_PUBLIC,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        )
        AccessToken.objects.create(
            user=acme.client, application=app, token="live-token", expires="2999-01-01T00:00Z"
        )
        DevIdentity.objects.create(user=acme.client, tenant_claim=str(acme.tenant.id))
        assert AccessToken.objects.filter(token="live-token").exists()
    with transaction.atomic(), tenant_context(acme.tenant, user_id=acme.client.pk):
        for table in (
            "oauth2_provider_accesstoken",
            "oauth2_provider_refreshtoken",
            "oauth2_provider_application",
            "oauth2_provider_grant",
            "oauth2_provider_idtoken",
            "devidp_devidentity",
        ):
            assert rows(f"SELECT count(*) FROM public.{table}") == [(0,)], table
        assert rows("UPDATE public.devidp_devidentity SET roles = '[\"owner\"]' RETURNING id") == []
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            Application.objects.create(
                name="Evil",
                client_id="evil",
                client_type=Application.CLIENT_PUBLIC,
                authorization_grant_type=Application.GRANT_IMPLICIT,
                skip_authorization=True,
            )
    with platform_context():  # staff see no provider tokens either
        assert not AccessToken.objects.exists()


# --------------------------------------------------------------------------- the audit log


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT set_config('app.audit_operator', 'on', true)",
        "SELECT set_config('app.current_user', %(owner)s, true)",
    ],
)
def test_a_client_cannot_read_the_audit_log_by_claiming_a_flag(
    acme: World, as_acme_client: None, statement: str
) -> None:
    record_audit_event("test.event")
    rows(statement % {"owner": f"'{acme.owner.pk}'"})
    assert rows("SELECT count(*) FROM public.audit_auditevent")[0][0] == 0


def test_audit_events_name_the_verified_actor_not_the_claimed_one(
    acme: World, as_acme_client: None
) -> None:
    rows(
        "SELECT * FROM public.audit_record_event('support', '1', 'Support Sam', "
        "'support.viewed', 'conversation', 'x', '', '', NULL, '', '', %s)",
        ['{"support_session": "00000000-0000-0000-0000-000000000000", "z": 1, "a": "é"}'],
    )
    with audit_operator():
        event = AuditEvent.objects.get(action="support.viewed")
        assert (event.actor_type, event.actor_id, event.actor_label) == (
            "user",
            str(acme.client.pk),
            acme.client.username,
        )
        assert event.context == {"a": "é", "z": 1}  # the claimed session is dropped
        assert verify_tenant_log().ok, verify_tenant_log().problems


def test_non_canonical_context_json_cannot_poison_the_chain(
    acme: World, as_acme_client: None
) -> None:
    for text in ('{ "b" : 1,  "a":[1, {"y":true,"x":null}] }', '{"\\u00e9": "\\n"}'):
        rows(
            "SELECT * FROM public.audit_record_event('system', '', '', 'test.json', '', '', '', "
            "'', NULL, '', '', %s)",
            [text],
        )
    assert refused(
        "SELECT * FROM public.audit_record_event('system', '', '', 'test.json', '', '', '', "
        "'', NULL, '', '', %s)",
        ['{"a": 1.5}'],
    )
    with audit_operator():
        assert verify_tenant_log().ok, verify_tenant_log().problems


def test_audit_record_event_needs_a_verified_context(acme: World) -> None:
    with transaction.atomic():
        rows("SELECT set_config('app.current_tenant', %s, true)", [str(acme.tenant.id)])
        assert refused(
            "SELECT * FROM public.audit_record_event('system', '', '', 'x', '', '', '', '', "
            "NULL, '', '', '{}')"
        )


# --------------------------------------------------------------------------- over HTTP


@override_settings(ROOT_URLCONF="tests.injectable")
def test_the_attacks_through_an_injectable_view(acme: World, globex: World) -> None:
    client = Client()
    client.force_login(acme.client)

    def inject(sql: str) -> Any:
        response = client.get("/test-only/inject/", {"q": sql})
        assert response.status_code == 200, response.content
        return json.loads(response.content)

    assert inject("SELECT count(*) FROM conversations_conversation") == {"rows": [[2]]}
    own = inject("SELECT current_setting('playbook.context', true)")["rows"][0][0]
    forged = own.replace(str(acme.tenant.id), str(globex.tenant.id))
    for attack in (
        f"SELECT set_config('app.current_tenant', '{globex.tenant.id}', true)",
        f"SELECT set_config('playbook.context', '{forged}', true)",
    ):
        answer = inject(
            f"WITH a AS ({attack}) SELECT count(*) FROM conversations_conversation, a "
            f"WHERE tenant_id = '{globex.tenant.id}'"
        )
        assert answer == {"rows": [[0]]}
    assert inject("SELECT count(*) FROM playbook_context_keys")["error"]
    assert inject("SELECT count(*) FROM accounts_user") == {"rows": [[4]]}  # acme's people
    assert inject("SELECT session_data FROM django_session")["error"]
    assert inject("CREATE TEMP TABLE accounts_membership (role text)")["error"]
    assert inject(
        f"UPDATE tenants_tenant SET plan = 'enterprise' WHERE id = '{globex.tenant.id}' "
        "RETURNING id"
    ) == {"rows": []}
    with tenant_context(globex.tenant):
        assert Conversation.objects.filter(title__contains="pwned").count() == 0


def test_every_chain_verifies_after_the_attacks(acme: World, globex: World) -> None:
    with transaction.atomic(), tenant_context(acme.tenant, user_id=acme.client.pk):
        rows(
            "SELECT * FROM public.audit_record_event('support', '9', 'x', 'forged', '', '', '', "
            "'', NULL, '', '', %s)",
            ['{ "k": [1,2]}'],
        )
    for world in (acme, globex):
        with tenant_context(world.tenant), audit_operator():
            assert verify_tenant_log().ok, verify_tenant_log().problems
