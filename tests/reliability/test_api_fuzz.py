"""Schemathesis against the OpenAPI schema, as two tenants: no 5xx, no other tenant's ids.

Two tenants, "amberfield" and "bluestone", each with the data of `tests/test_api_access`
(people, conversations and messages, a ready document, drafts waiting for review, API keys, a
vault credential, an entitlement, a support session, audit events). Every operation of the
schema that `/api/schema/` serves is generated (examples, coverage and fuzzing phases, valid
and invalid data) and sent in-process to the WSGI app, once per principal: each tenant's
owner with a bearer JWT (verified against a JWKS of the test's own, as in production) and
each tenant's write-scoped API key. Checks on every response:

- `not_a_server_error`: no 5xx;
- `response_schema_conformance`: 2xx bodies match the schema;
- `no_foreign_ids`: no id of the other tenant's rows (every UUID primary key of every
  tenant table, the tenant id, user ids, audit event ids) and not its slug, anywhere in the
  body, unless the request itself carried it;
- `like_a_missing_object`: a request aimed at the other tenant's object gets exactly the
  status and body of the same request for an id that does not exist (never a 2xx with
  its data, never a different error).

Random ids would only ever find nothing, so two cases in three are aimed at real objects:
the generated `{id}` (and a conversation's `client`) is replaced by one of the principal's
own objects of that kind or by one of the other tenant's, chosen from the generated input
(the same input always aims at the same object, as Hypothesis's replays need).

Bounded for `make test`: `FUZZ_MAX_EXAMPLES` (default 10) fuzzed cases per operation and
principal; the owners also get the examples and coverage phases (boundary and invalid values
of every field), the API keys, whose scope is checked before any field, fuzzing only.
`FUZZ_SEED` fixes the generation, so a run is reproducible and another seed explores further.
`pytest -m reliability tests/reliability/test_api_fuzz.py`.

The tenants are built once for the module, in a transaction that is rolled back at its end;
each test (one operation as one principal) runs in a savepoint inside it, so every test
starts from the same data. Review decisions resume a LangGraph run; the drafts here are made
with the ORM (no checkpoints, and the graph's threads could not see uncommitted rows), so the
graph is stood in for as in test_api_access. Real runs and reviews: tests/reliability/load.py.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from django.test import override_settings
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from accounts import oidc
from agents import runs
from tenants.context import tenant_context
from tests.factories import UserFactory
from tests.reliability.identity import LocalIssuer
from tests.reliability.leaks import IdLedger, tenant_rows
from tests.test_api_access import ResumeWithoutGraph, Tenancy, make_tenancy

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "10"))
SEED = int(os.environ.get("FUZZ_SEED", "20260109"))
TENANTS = ("amberfield", "bluestone")
OWNERS = [f"{slug}-owner_jwt" for slug in TENANTS]
KEYS = [f"{slug}-write_key" for slug in TENANTS]


def config(*, coverage: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "mode": "all"},
            "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": False}},
        }
    )


def served_schema() -> dict[str, Any]:
    """What GET /api/schema/ serves (as JSON), without a request: the schema is loaded when
    the module is collected, where there is no database (every request opens a transaction).
    Schemathesis's lazy `from_fixture` would load it in a fixture, but it does not run on
    pytest 9 (it sets `Node._nodeid`, which pytest 9 no longer has)."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    return dict(json.loads(OpenApiJsonRenderer().render(document)))


SCHEMA = served_schema()
APP = WSGIHandler()  # requests go in-process, through every middleware
# The owners reach every endpoint: every phase, including the coverage phase's boundary and
# invalid values of each field. The API keys' scope is checked before any field: fuzzing only.
owner_schema = schemathesis.openapi.from_dict(SCHEMA, config=config(coverage=True))
owner_schema.app = APP
key_schema = schemathesis.openapi.from_dict(SCHEMA, config=config(coverage=False))
key_schema.app = APP


@dataclass(frozen=True)
class Principal:
    name: str
    tenant_id: str
    other_tenant_id: str
    authorization: str


RESOURCE = re.compile(
    r"^/api/v1/(conversations|api-keys|support-sessions|audit/events|documents|agent-runs"
    r"|registry/entitlements|review-queue|credentials)/\{id\}/"
)


def targets_of(tenancy: Tenancy) -> dict[str, list[Any]]:
    """Real objects of each kind a path `{id}` (or a `client`) may name."""
    return {
        "conversations": [str(c.id) for c in tenancy.world.conversations],
        "api-keys": [str(tenancy.api_key.id)],  # not the keys the fuzzing uses
        "support-sessions": [str(tenancy.support_session.id)],
        "audit/events": [tenancy.audit_event_id],
        "documents": [str(tenancy.document.id)],
        "agent-runs": [str(run.id) for run in tenancy.runs.values()],
        "registry/entitlements": [str(tenancy.entitlement.id)],
        "review-queue": [str(draft.id) for draft in tenancy.drafts.values()],
        "credentials": [str(tenancy.credential.id)],
        "client": [tenancy.world.client.id, tenancy.world.other_client.id],
    }


@dataclass(frozen=True)
class Aim:
    tenant: str  # whose object the case names
    resource: str
    target: Any

    def missing(self) -> Any:
        """An id of the same kind that names nothing."""
        if self.resource == "audit/events":
            return 2**62
        if self.resource == "client":
            return 2**31 - 1
        return str(uuid.uuid4())

    def apply(self, case: schemathesis.Case, value: Any) -> None:
        if self.resource == "client":
            assert isinstance(case.body, dict)
            case.body["client"] = value
        else:
            case.path_parameters["id"] = value


def blank(text: str, value: Any) -> str:
    """`text` with the id `value` (not a longer token that contains it) replaced by <id>."""
    return re.sub(rf"(?<![0-9A-Za-z-]){re.escape(str(value))}(?![0-9A-Za-z-])", "<id>", text)


def aim(case: schemathesis.Case, principal: Principal, targets: dict[str, Any]) -> Aim | None:
    """Point the case at a real object of the principal's tenant or of the other tenant,
    or leave it as generated."""
    if "id" in case.path_parameters and (match := RESOURCE.match(case.path)):
        resource = match.group(1)
    elif case.path == "/api/v1/conversations/" and isinstance(case.body, dict):
        resource = "client"
    else:
        return None
    # Derived from the whole generated input, so that the same input aims the same way.
    choice = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    if choice % 3 == 0:
        return None
    tenant = principal.tenant_id if choice % 3 == 1 else principal.other_tenant_id
    candidates = targets[tenant][resource]
    aimed = Aim(tenant, resource, candidates[(choice // 3) % len(candidates)])
    aimed.apply(case, aimed.target)
    return aimed


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer()
    yield local
    local.close()


@pytest.fixture(scope="module")
def tenancies(
    django_db_setup: None, django_db_blocker: Any, issuer: LocalIssuer
) -> Iterator[dict[str, Tenancy]]:
    """Both tenants, once for the module, rolled back at its end. Like Django's test client,
    in-process requests must not close the connection (that would end the transaction)."""
    signals = (request_started, request_finished)
    with (
        django_db_blocker.unblock(),
        pytest.MonkeyPatch.context() as patch,
        override_settings(OIDC_ISSUER=issuer.issuer, OIDC_OP_JWKS_ENDPOINT=issuer.jwks_url),
        transaction.atomic(),
    ):
        patch.setattr(runs, "build_graph", ResumeWithoutGraph)
        for signal in signals:
            signal.disconnect(close_old_connections)
        oidc.reset_caches()
        try:
            staff = UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)
            built = {slug: make_tenancy(slug, staff) for slug in TENANTS}
            for slug, tenancy in built.items():
                # The owner's JWT names this very account, as after a first login.
                owner = tenancy.world.owner
                owner.oidc_issuer, owner.oidc_subject = issuer.issuer, f"owner-{slug}"
                with tenant_context(tenancy.world.tenant):
                    owner.save(update_fields=["oidc_issuer", "oidc_subject"])
            yield built
        finally:
            transaction.set_rollback(True)
            oidc.reset_caches()
            for signal in signals:
                signal.connect(close_old_connections)


@pytest.fixture(scope="module")
def ledger(tenancies: dict[str, Tenancy]) -> IdLedger:
    # One principal per test, and every test is rolled back: the other tenant's rows are
    # exactly these while a principal is fuzzed.
    return IdLedger(tenant_rows(t.tenant_id) for t in tenancies.values())


@pytest.fixture(scope="module")
def targets(tenancies: dict[str, Tenancy]) -> dict[str, dict[str, list[Any]]]:
    return {str(t.tenant_id): targets_of(t) for t in tenancies.values()}


@pytest.fixture(scope="module")
def principal(
    request: pytest.FixtureRequest, tenancies: dict[str, Tenancy], issuer: LocalIssuer
) -> Principal:
    """`amberfield-owner_jwt`, `bluestone-write_key`... (parametrized indirectly)."""
    slug, kind = str(request.param).split("-")
    tenancy = tenancies[slug]
    tenant_id = str(tenancy.tenant_id)
    (other,) = (str(t.tenant_id) for s, t in tenancies.items() if s != slug)
    if kind == "owner_jwt":
        token = issuer.token(subject=f"owner-{slug}", tenant_id=tenant_id, role="owner")
    else:
        token = tenancy.write_key
    return Principal(f"{slug} {kind}", tenant_id, other, f"Bearer {token}")


@pytest.fixture(scope="module")
def no_foreign_ids(principal: Principal, ledger: IdLedger) -> Callable[..., None]:
    def no_foreign_ids(ctx: CheckContext, response: schemathesis.Response, case: Any) -> None:
        request = response.request
        sent = f"{request.url} {request.body!r}"
        leaks = ledger.foreign(principal.tenant_id, response.content, sent)
        if leaks:
            raise AssertionError(
                f"{principal.name}: {case.method} {case.formatted_path} answered "
                f"{response.status_code} with another tenant's ids: "
                + "; ".join(str(leak) for leak in leaks[:5])
            )

    return no_foreign_ids


def fuzz(
    case: schemathesis.Case,
    principal: Principal,
    targets: dict[str, dict[str, list[Any]]],
    no_foreign_ids: Callable[..., None],
) -> None:
    aimed = aim(case, principal, targets)

    def like_a_missing_object(
        ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case
    ) -> None:
        """Another tenant's object answers exactly as one that does not exist (invariant 7):
        the same request for a missing id gets the same status and body."""
        if aimed is None or aimed.tenant != principal.other_tenant_id:
            return
        twin = case.derive(keep_auth=True)
        missing = aimed.missing()
        aimed.apply(twin, missing)
        control = twin.call(headers={"Authorization": principal.authorization})
        theirs, nothing = blank(response.text, aimed.target), blank(control.text, missing)
        if (response.status_code, theirs) != (control.status_code, nothing):
            raise AssertionError(
                f"{principal.name}: {case.method} {case.formatted_path} aimed at the other "
                f"tenant's {aimed.resource} answered {response.status_code} {theirs[:300]!r}; "
                f"for a missing one {control.status_code} {nothing[:300]!r}"
            )

    case.call_and_validate(
        headers={"Authorization": principal.authorization},
        checks=[
            not_a_server_error,
            response_schema_conformance,
            no_foreign_ids,
            like_a_missing_object,
        ],
    )


@owner_schema.parametrize()
@pytest.mark.parametrize("principal", OWNERS, indirect=True)
def test_owners_never_get_a_5xx_nor_another_tenants_ids(
    case: schemathesis.Case,
    principal: Principal,
    targets: dict[str, dict[str, list[Any]]],
    no_foreign_ids: Callable[..., None],
) -> None:
    fuzz(case, principal, targets, no_foreign_ids)


@key_schema.parametrize()
@pytest.mark.parametrize("principal", KEYS, indirect=True)
def test_api_keys_never_get_a_5xx_nor_another_tenants_ids(
    case: schemathesis.Case,
    principal: Principal,
    targets: dict[str, dict[str, list[Any]]],
    no_foreign_ids: Callable[..., None],
) -> None:
    fuzz(case, principal, targets, no_foreign_ids)
