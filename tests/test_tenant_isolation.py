"""The tenant boundary at the database, as the runtime role (DESIGN.md invariants 2, 4, 6)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import Membership, role_in_current_tenant
from conversations.models import Conversation, Message
from tenants.context import (
    LEAVE_SQL,
    TenantScopeError,
    current_role,
    current_tenant_id,
    tenant_context,
)
from tests.factories import UserFactory, World, build_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme() -> World:
    return build_world("acme")


@pytest.fixture
def globex() -> World:
    # Identical titles in both tenants: nothing may be told apart by content alone.
    return build_world("globex")


def raw_ids(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT id::text FROM "{table}"')
        return {row[0] for row in cursor.fetchall()}


def execute(sql: str, params: list[Any]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def current_setting() -> str | None:
    """The tenant the database admits now (the verified context's), or None."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT public.playbook_context_tenant()::text")
        return cursor.fetchone()[0]


def test_runtime_role_is_not_privileged() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        user, is_super, bypass = cursor.fetchone()
    assert user == "playbook_app"
    assert not is_super and not bypass


def test_orm_and_raw_sql_inside_a_tenant_see_only_that_tenant(acme: World, globex: World) -> None:
    with tenant_context(acme.tenant):
        assert {
            str(i) for i in Conversation.objects.values_list("id", flat=True)
        } == acme.conversation_ids
        assert raw_ids("conversations_conversation") == acme.conversation_ids
        assert len(raw_ids("conversations_message")) == 2
        assert Membership.objects.count() == 4
    with tenant_context(globex.tenant):
        assert raw_ids("conversations_conversation") == globex.conversation_ids


def test_outside_any_tenant_raw_sql_sees_nothing_and_the_orm_raises(
    acme: World, globex: World
) -> None:
    assert current_tenant_id() is None
    assert raw_ids("conversations_conversation") == set()
    assert raw_ids("conversations_message") == set()
    assert raw_ids("accounts_membership") == set()
    with pytest.raises(TenantScopeError):
        list(Conversation.objects.all())
    with pytest.raises(TenantScopeError):
        Conversation.objects.create(client=acme.client, title="orphan")
    # The explicit bypass of the ORM check still meets row-level security in the database.
    assert Conversation.objects.unscoped().count() == 0
    assert Conversation.all_tenants.count() == 0


def test_writing_another_tenants_row_is_rejected_by_the_database(
    acme: World, globex: World
) -> None:
    with tenant_context(acme.tenant):
        # ORM: refused before it reaches the database.
        with pytest.raises(TenantScopeError):
            Conversation(tenant=globex.tenant, client=globex.client, title="smuggled").save()
        # Bypassing the model's check (bulk_create skips save()), WITH CHECK rejects it.
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            Conversation.all_tenants.bulk_create(
                [Conversation(tenant=globex.tenant, client=globex.client, title="smuggled")]
            )
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            execute(
                "INSERT INTO conversations_conversation "
                "(id, tenant_id, client_id, title, status, created_at, updated_at) "
                "VALUES (%s, %s, %s, 'raw', 'open', now(), now())",
                [uuid.uuid4(), globex.tenant.id, globex.client.id],
            )
        # Moving one of our rows into the other tenant is rejected too.
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            execute(
                "UPDATE conversations_conversation SET tenant_id = %s WHERE id = %s",
                [globex.tenant.id, acme.conversations[0].id],
            )
        # The other tenant's rows cannot be updated or deleted: they are not there.
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE conversations_conversation SET title = 'pwned' WHERE id = %s",
                [globex.conversations[0].id],
            )
            assert cursor.rowcount == 0
            cursor.execute(
                "DELETE FROM conversations_message WHERE conversation_id = %s",
                [globex.conversations[0].id],
            )
            assert cursor.rowcount == 0
    with tenant_context(globex.tenant):
        assert Conversation.objects.get(id=globex.conversations[0].id).title.startswith("Strategy")
        assert Message.objects.filter(conversation=globex.conversations[0]).count() == 1


def test_a_child_row_cannot_point_at_another_tenants_parent(acme: World, globex: World) -> None:
    """PostgreSQL checks foreign keys without RLS; the composite (tenant_id, id) keys catch it."""
    with tenant_context(acme.tenant):
        with pytest.raises(IntegrityError, match="same_tenant"), transaction.atomic():
            Message.objects.create(
                conversation_id=globex.conversations[0].id, sender="client", body="hi"
            )
        with pytest.raises(IntegrityError, match="same_tenant"), transaction.atomic():
            execute(
                "UPDATE conversations_message SET conversation_id = %s WHERE conversation_id = %s",
                [globex.conversations[0].id, acme.conversations[0].id],
            )
        # A tenant row pointing at a user of another tenant.
        with pytest.raises(IntegrityError, match="same_tenant"), transaction.atomic():
            Conversation.objects.create(client=globex.client, title="wrong client")
        with pytest.raises(IntegrityError, match="same_tenant"), transaction.atomic():
            Membership.objects.create(user=globex.owner, role=Membership.Role.ADMIN)
        # Platform staff (no tenant) cannot be made a member of any tenant either.
        staff = UserFactory(username="staff@platform.test", tenant=None, is_staff=True)
        with pytest.raises(IntegrityError, match="same_tenant"), transaction.atomic():
            Membership.objects.create(user=staff, role=Membership.Role.ADMIN)


def test_a_users_tenant_never_changes(acme: World, globex: World) -> None:
    user = acme.client
    user.tenant = globex.tenant
    with (
        pytest.raises(IntegrityError, match="tenant never changes"),
        transaction.atomic(),
        tenant_context(acme.tenant),  # in its own tenant: the trigger is what refuses
    ):
        user.save()


def test_tenant_context_restores_the_setting_and_refuses_a_second_tenant(
    acme: World, globex: World
) -> None:
    with transaction.atomic():  # an outer transaction, like a request's
        assert current_setting() in (None, "")
        with tenant_context(acme.tenant.id) as entered:
            assert entered == acme.tenant.id
            assert current_setting() == str(acme.tenant.id)
            with tenant_context(str(acme.tenant.id)):  # same tenant: re-entrant
                assert current_tenant_id() == acme.tenant.id
            with (
                pytest.raises(TenantScopeError, match="Already in tenant"),
                tenant_context(globex.tenant),
            ):
                pass
            assert current_setting() == str(acme.tenant.id)
        assert current_tenant_id() is None
        assert current_setting() is None
        assert raw_ids("conversations_conversation") == set()

        with pytest.raises(ZeroDivisionError), tenant_context(globex.tenant):
            assert raw_ids("conversations_conversation") == globex.conversation_ids
            1 / 0  # noqa: B018
        assert current_tenant_id() is None
        assert current_setting() in (None, "")
        assert raw_ids("conversations_conversation") == set()


def test_saving_fills_the_tenant_from_the_context(acme: World) -> None:
    with tenant_context(acme.tenant):
        conversation = Conversation(client=acme.client, title="Filled in")
        conversation.save()
        assert conversation.tenant_id == acme.tenant.id
        messages = Message.objects.bulk_create(
            [Message(conversation=conversation, sender="client", body=f"m{i}") for i in range(3)]
        )
        assert {m.tenant_id for m in messages} == {acme.tenant.id}


def test_tenant_ids_are_validated() -> None:
    with pytest.raises(TenantScopeError, match="not a tenant id"), tenant_context("acme"):
        pass


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE conversations_conversation DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE conversations_conversation NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON conversations_conversation",
        "TRUNCATE conversations_message",
        "CREATE TABLE sneaky (id int)",
        "SET ROLE playbook_owner",
        "SET row_security = off; SELECT count(*) FROM conversations_conversation",
    ],
)
def test_the_runtime_role_cannot_switch_the_boundary_off(statement: str) -> None:
    with pytest.raises(DatabaseError), transaction.atomic():
        execute(statement, [])


def test_entering_is_one_statement_that_verifies_the_principal_and_reads_its_role(
    acme: World,
) -> None:
    def context_now() -> tuple[str | None, str | None]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT public.playbook_context_tenant()::text, "
                "current_setting('playbook.context', true)"
            )
            return cursor.fetchone()

    with transaction.atomic():  # an outer transaction, like a request's
        with (
            CaptureQueriesContext(connection) as queries,
            tenant_context(acme.tenant, user_id=acme.owner.pk),
        ):
            tenant, bound = context_now()
            assert tenant == str(acme.tenant.id)
            assert f"|user|{acme.owner.pk}|" in (bound or "")
            assert current_role() == "owner"
            # The role came with the entry: asking for it costs no query.
            before = len(queries)
            assert role_in_current_tenant(acme.owner) == "owner"
            assert len(queries) == before
        entries = [q for q in queries if "playbook_enter" in q["sql"]]
        assert len(entries) == 1
        assert "'<context>'" in entries[0]["sql"]  # sent as a bind parameter
        assert context_now() == (None, "")


def test_a_request_enters_its_tenant_with_one_statement_and_reads_no_role_again(
    acme: World,
) -> None:
    browser = Client()
    browser.force_login(acme.consultant)
    with CaptureQueriesContext(connection) as queries:
        response = browser.get("/api/v1/conversations/")
    assert response.status_code == 200
    sql = [q["sql"] for q in queries]
    assert sum("playbook_enter" in s for s in sql) == 1, sql
    # Only clearing the context at the end, because the test runs inside an outer transaction.
    assert [s for s in sql if "set_config" in s] in ([], [LEAVE_SQL]), sql
    # The role came with the entry: no role lookup of its own.
    assert not any(s.startswith("SELECT role FROM public.accounts_membership") for s in sql), sql
