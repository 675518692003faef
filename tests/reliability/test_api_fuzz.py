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

Beside the generated cases, deterministic hostile payloads (issue 15) go to every operation,
as the first owner: NUL in every parameter and body property, a JSON body 100,000 levels
deep, one byte over `INPUT_MAX_JSON_BYTES`, or not UTF-8, 10**30 and 5000-digit numbers
(also as a Content-Length), far dates in every date and date-time, damaged cursors. Each is
never a 5xx, a 4xx is JSON with `code` and `message`, and what must be refused outright is
refused with its code. The places come from the schema itself; a guard test fails when an
operation, a parameter or a body property gets no hostile payload.

The tenants are built once for the module, in a transaction that is rolled back at its end;
each test (one operation as one principal) runs in a savepoint inside it, so every test
starts from the same data. Review decisions resume a LangGraph run; the drafts here are made
with the ORM (no checkpoints, and the graph's threads could not see uncommitted rows), so the
graph is stood in for as in test_api_access. Real runs and reviews: tests/reliability/load.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import schemathesis
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from django.test import override_settings
from django.test.client import encode_multipart
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from werkzeug.test import Client as WSGIClient
from werkzeug.test import TestResponse

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


# --------------------------------------------------------------------------- hostile payloads
# Deterministic, beside the generated cases above: every operation of SCHEMA with every kind
# of input issue 15 names, in every place the schema says the operation reads. Parameters and
# body properties are read from SCHEMA itself ($ref and allOf resolved), so a new operation or
# field is covered the day it is added.

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

NUL = "NUL"
DEEP = "deep nesting"
OVERSIZED = "oversized body"
INVALID_UTF8 = "invalid UTF-8"
HUGE_NUMBERS = "huge numbers"
FAR_DATES = "far dates"
CURSORS = "malformed cursor"

HUGE = ("1" + "0" * 30, "9" * 5000)  # 10**30, and more digits than Python reads by default
FAR_DAYS = ("9999-12-31", "0001-01-01")
# The last and first instants a datetime holds, and the same ones past the edge once
# converted to UTC (year 10000, year 0).
FAR_MOMENTS = (
    *FAR_DAYS,
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00+14:00",
)
BAD_CURSORS = (
    base64.b64encode(b"p=abc").decode(),
    base64.b64encode(b"r=1&p=x").decode(),
    "%%%not base64",
)
NUL_TEXT = "a\x00b"
JSON = "application/json"
BOUNDARY = "HostilePayloadBoundary"


def resolved(node: Any) -> dict[str, Any]:
    """A schema node with its `$ref` followed and its `allOf` merged (drf-spectacular wraps
    enums and read-only references in an allOf)."""
    node = dict(node)
    while "$ref" in node:
        target: Any = SCHEMA
        for part in node.pop("$ref").removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **node}
    for part in node.pop("allOf", []):
        node = {**resolved(part), **node}
    return node


@dataclass(frozen=True)
class Field:
    location: str  # "path", "query" or "body"
    name: str
    kind: str  # "integer", "date", "date-time", "text" or "other" (boolean, array...)
    sample: Any = None  # a value the operation accepts (the first of an enum)

    @property
    def label(self) -> str:
        return f"{self.location} {self.name}"


SAMPLES = {
    "integer": 1,
    "date": "2030-01-01",
    "date-time": "2030-01-01T00:00:00Z",
    "text": "Hostile payload test",
    "other": True,
}


def field_of(location: str, name: str, schema: dict[str, Any]) -> Field:
    node = resolved(schema)
    kind, fmt = node.get("type"), node.get("format")
    if kind in ("integer", "number"):
        sort = "integer"
    elif kind == "string" and fmt in ("date", "date-time"):
        sort = str(fmt)
    elif kind == "string" or kind is None:  # no type: a JSON value of any kind, text included
        sort = "text"
    else:
        sort = "other"
    return Field(location, name, sort, node.get("enum", [SAMPLES[sort]])[0])


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    fields: tuple[Field, ...]
    media_types: tuple[str, ...]  # of its request body, as declared

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def of(self, location: str, *kinds: str) -> list[Field]:
        return [f for f in self.fields if f.location == location and (not kinds or f.kind in kinds)]


def operations(schema: dict[str, Any]) -> list[Operation]:
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            fields = [
                field_of(param["in"], param["name"], param.get("schema", {}))
                for param in map(
                    resolved, [*item.get("parameters", []), *operation.get("parameters", [])]
                )
                if param["in"] in ("path", "query")
            ]
            content = operation.get("requestBody", {}).get("content", {})
            for media_type in content.values():
                body = resolved(media_type.get("schema", {}))
                for name, prop in body.get("properties", {}).items():
                    field = field_of("body", name, prop)
                    if not resolved(prop).get("readOnly") and field not in fields:
                        fields.append(field)
            found.append(Operation(method.upper(), path, tuple(fields), tuple(content)))
    return found


def plausible(operation: Operation) -> dict[str, Any]:
    """A body the operation could accept, apart from the one hostile value put into it."""
    return {field.name: field.sample for field in operation.of("body")}


class RawNumber(str):
    """A JSON number written out as is (json.dumps cannot write 5000 digits)."""


def encode(media_type: str, values: dict[str, Any]) -> tuple[bytes, str]:
    if media_type == JSON:
        raw = {
            k: f"\x01{i}\x01" for i, (k, v) in enumerate(values.items()) if isinstance(v, RawNumber)
        }
        text = json.dumps({**values, **raw})
        for key, marker in raw.items():
            text = text.replace(json.dumps(marker), values[key])
        return text.encode(), JSON
    if media_type.startswith("multipart/"):
        return encode_multipart(BOUNDARY, values), f"multipart/form-data; boundary={BOUNDARY}"
    return urlencode(values).encode(), media_type


@dataclass(frozen=True)
class Hostile:
    """One request: an operation with one payload in one place."""

    operation: Operation
    payload: str  # the payload class
    where: str  # what carries it
    field: Field | None = None
    path_values: tuple[tuple[str, str], ...] = ()  # instead of the principal's own object
    query: str = ""
    body: bytes = b""
    content_type: str = ""
    pad_to: int = 0  # a JSON body of exactly this many bytes (built when sent)
    content_length: str = ""  # instead of the body's length
    refused_as: tuple[int, str] | None = None  # what an outright refusal must answer

    @property
    def label(self) -> str:
        return f"{self.operation.label} with {self.payload} in {self.where}"

    def payload_body(self) -> bytes:
        if not self.pad_to:
            return self.body
        shell = b'{"padding": ""}'
        return shell[:-2] + b"x" * (self.pad_to - len(shell)) + shell[-2:]


def hostile_requests(operation: Operation) -> list[Hostile]:
    found: list[Hostile] = []
    refused_nul = (400, "invalid_characters")

    def in_query(payload: str, field: Field, value: str, refused: Any = None) -> None:
        where = f"{field.label} = {value[:24]!r}"
        query = urlencode({field.name: value})
        found.append(Hostile(operation, payload, where, field, query=query, refused_as=refused))

    def in_path(payload: str, field: Field, value: str, refused: Any = None) -> None:
        where = f"{field.label} = {value[:24]!r}"
        found.append(
            Hostile(operation, payload, where, field, ((field.name, value),), refused_as=refused)
        )

    def in_body(payload: str, field: Field, value: Any, refused: Any = None) -> None:
        for media_type in operation.media_types:
            body, content_type = encode(media_type, {**plausible(operation), field.name: value})
            where = f"{field.label} = {str(value)[:24]!r} as {media_type}"
            found.append(
                Hostile(
                    operation,
                    payload,
                    where,
                    field,
                    body=body,
                    content_type=content_type,
                    refused_as=refused,
                )
            )

    # NUL: in every parameter and every body property, whatever its type, and in a query
    # parameter the operation does not declare (the guard reads them all).
    in_query(NUL, Field("query", "undeclared", "text"), NUL_TEXT, refused_nul)
    for field in operation.of("query"):
        in_query(NUL, field, NUL_TEXT, refused_nul)
    for field in operation.of("path"):
        in_path(NUL, field, NUL_TEXT, refused_nul)
    for field in operation.of("body"):
        in_body(NUL, field, NUL_TEXT, refused_nul)
    # The body itself, on every operation (a body on a GET is read all the same).
    first = next((f.name for f in operation.of("body", "text")), "text")
    deep = f'{{"{first}": ' + "[" * 99_999 + "]" * 99_999 + "}"
    found.append(
        Hostile(
            operation,
            DEEP,
            "a JSON body 100,000 levels deep",
            body=deep.encode(),
            content_type=JSON,
            refused_as=(400, "too_deep"),
        )
    )
    found.append(
        Hostile(
            operation,
            OVERSIZED,
            "a JSON body one byte over INPUT_MAX_JSON_BYTES",
            content_type=JSON,
            pad_to=settings.INPUT_MAX_JSON_BYTES + 1,
            refused_as=(413, "body_too_large"),
        )
    )
    found.append(
        Hostile(
            operation,
            INVALID_UTF8,
            "a JSON body that is not UTF-8",
            body=f'{{"{first}": "'.encode() + b"\xff\xfe" + b'"}',
            content_type=JSON,
            refused_as=(400, "invalid_encoding"),
        )
    )
    # Huge numbers: every integer parameter and property; a 5000-digit number in a body of
    # every operation (the JSON parser refuses it, whatever the body is for).
    for value in HUGE:
        for field in operation.of("query", "integer"):
            in_query(HUGE_NUMBERS, field, value)
        for field in operation.of("path", "integer"):
            in_path(HUGE_NUMBERS, field, value)
        for field in operation.of("body", "integer"):
            in_body(HUGE_NUMBERS, field, RawNumber(value))
    # A Content-Length of 5000 digits, for a JSON body and a body of each declared type.
    for media_type in dict.fromkeys((JSON, *operation.media_types)):
        body, content_type = encode(media_type, plausible(operation))
        found.append(
            Hostile(
                operation,
                HUGE_NUMBERS,
                f"the Content-Length of a body as {media_type}, 5000 digits long",
                body=body,
                content_type=content_type,
                content_length=HUGE[1],
                refused_as=(413, "body_too_large"),
            )
        )
    if not operation.of("body", "integer"):
        found.append(
            Hostile(
                operation,
                HUGE_NUMBERS,
                "a 5000-digit number in a JSON body",
                body=b'{"number": ' + HUGE[1].encode() + b"}",
                content_type=JSON,
            )
        )
    # Far dates: every date and date-time parameter and property.
    for field in operation.of("query", "date", "date-time") + operation.of(
        "body", "date", "date-time"
    ):
        for value in FAR_DAYS if field.kind == "date" else FAR_MOMENTS:
            if field.location == "query":
                in_query(FAR_DATES, field, value)
            else:
                in_body(FAR_DATES, field, value)
    # Damaged page links.
    for field in operation.of("query"):
        if field.name == "cursor":
            for value in BAD_CURSORS:
                in_query(CURSORS, field, value, (400, "invalid"))
    return found


OPERATIONS = operations(SCHEMA)
HOSTILE: dict[tuple[str, str], list[Hostile]] = {}
for _operation in OPERATIONS:
    for _hostile in hostile_requests(_operation):
        HOSTILE.setdefault((_operation.label, _hostile.payload), []).append(_hostile)


def path_of(
    hostile: Hostile, principal: Principal, targets: dict[str, dict[str, list[Any]]]
) -> str:
    """The operation's path naming the principal's own objects, or the hostile value."""
    overrides = dict(hostile.path_values)
    path = hostile.operation.path
    own = targets[principal.tenant_id]
    for field in hostile.operation.of("path"):
        match = RESOURCE.match(hostile.operation.path)
        value = overrides.get(field.name)
        if value is None:
            value = str(own[match.group(1)][0]) if match else str(uuid.uuid4())
        path = path.replace(f"{{{field.name}}}", quote(value, safe=""))
    return path + (f"?{hostile.query}" if hostile.query else "")


def answered(response: TestResponse, label: str) -> dict[str, Any]:
    """No 5xx; a 4xx is JSON with a stable code and a message. The JSON body, if any."""
    status = response.status_code
    assert status < 500, f"{label}: {status} {response.data[:300]!r}"
    if status < 400:
        return {}
    assert response.mimetype == JSON, f"{label}: {status} {response.mimetype}"
    body: dict[str, Any] = json.loads(response.data)
    assert body.get("code") and body.get("message"), f"{label}: {status} {body}"
    return body


@pytest.mark.parametrize("principal", OWNERS[:1], indirect=True)
@pytest.mark.parametrize(
    ("operation", "payload"), sorted(HOSTILE), ids=[f"{o} with {p}" for o, p in sorted(HOSTILE)]
)
def test_hostile_payloads_are_refused_or_handled_never_a_5xx(
    operation: str,
    payload: str,
    principal: Principal,
    targets: dict[str, dict[str, list[Any]]],
) -> None:
    # Through the WSGI app, as Schemathesis sends its cases (Django's test client would
    # reconnect `close_old_connections`, and the next request would end the module's
    # transaction).
    client = WSGIClient(APP)
    for hostile in HOSTILE[(operation, payload)]:
        label = f"{principal.name}: {hostile.label}"
        environ: dict[str, Any] = {}
        if hostile.content_length:
            environ["CONTENT_LENGTH"] = hostile.content_length
        with transaction.atomic():  # each request in its own savepoint, as each test above
            response = client.open(
                path_of(hostile, principal, targets),
                method=hostile.operation.method,
                data=hostile.payload_body(),
                content_type=hostile.content_type or JSON,
                headers={"Authorization": principal.authorization},
                environ_overrides=environ,
                buffered=True,  # read whole inside the savepoint (the audit export streams)
            )
            transaction.set_rollback(True)
        body = answered(response, label)
        if hostile.refused_as is not None:
            assert (response.status_code, body.get("code")) == hostile.refused_as, (
                f"{label}: {response.status_code} {body}"
            )
        if hostile.payload == CURSORS:
            assert "cursor" in body["fields"], f"{label}: {body}"


def test_every_operation_of_the_schema_gets_hostile_payloads() -> None:
    """The guard of the test above: an operation, a parameter or a body property that the
    schema declares and that no hostile payload reaches fails here."""
    declared = {
        (method.upper(), path)
        for path, item in SCHEMA["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    reached = {(h.operation.method, h.operation.path) for group in HOSTILE.values() for h in group}
    assert declared == reached, f"operations without hostile payloads: {declared - reached}"
    always = {NUL, DEEP, OVERSIZED, INVALID_UTF8, HUGE_NUMBERS}
    for path, item in SCHEMA["paths"].items():
        for method, spec in item.items():
            if method not in HTTP_METHODS:
                continue
            label = f"{method.upper()} {path}"
            payloads = {payload for (op, payload) in HOSTILE if op == label}
            assert always <= payloads, f"{label}: no {always - payloads}"
            nul = {h.field.label for h in HOSTILE[(label, NUL)] if h.field is not None}
            for param in map(resolved, [*item.get("parameters", []), *spec.get("parameters", [])]):
                if param["in"] in ("path", "query"):
                    assert f"{param['in']} {param['name']}" in nul, (label, param["name"])
                    if param["name"] == "cursor":
                        assert CURSORS in payloads, label
                    if field_of("query", "", param.get("schema", {})).kind in ("date", "date-time"):
                        assert FAR_DATES in payloads, (label, param["name"])
            for media_type in spec.get("requestBody", {}).get("content", {}).values():
                properties = resolved(media_type.get("schema", {})).get("properties", {})
                for name, prop in properties.items():
                    if not resolved(prop).get("readOnly"):
                        assert f"body {name}" in nul, (label, name)
