"""No bad input reaches a 500 on the server-rendered product (issue 15): every page and form
of config.urls -- not /api/ (tests/reliability/test_api_fuzz.py), /admin/ or /idp/ -- with
every kind of hostile input in every field it reads.

`PAGES` classifies each URL name: a form or HTMX endpoint that takes POST (`Form`: the fields
its view reads, found in the view and its template, who uses it, its URL's arguments) or a
read-only page (`ReadOnly`: GET, with the query parameters it reads). A route the table does
not classify fails `test_the_table_classifies_every_page_of_the_product`, and so does a
read-only page that starts taking POST: a new form cannot go untested.

Each payload -- NUL, an unpaired surrogate (`%ED%A0%80`) and invalid UTF-8 (`%FF`) in a raw
urlencoded body, 10**30, a 5000-digit number, a digit `int()` refuses ("²"), far dates, a
1 MB value -- goes into one field at a time, the others keeping values the view accepts, so
that it reaches as far into the view as it can; into the file name of an upload; into a URL
argument that takes text; and, for a page that reads no field, into one it does not read (the
guard reads them all). An HTMX form gets every request twice, as a plain form and with
`HX-Request: true`; an HTMX poll gets them with the header. Each request runs in its own
savepoint.

Checks: never a 5xx; a 400 is an HTML page of the product (its layout, or the fragment an
HTMX request swaps in) with no traceback or internal name; a NUL is the product's 400 page
and changes no row of the tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from django.apps import apps
from django.db import transaction
from django.db.models import Max
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.converters import PathConverter, SlugConverter, StringConverter

from accounts.models import User
from agents import runs
from audit.actions import audit_operator
from audit.models import AuditEvent
from tenants.context import tenant_context
from tenants.models import Tenant, TenantScopedModel
from tests.factories import UserFactory
from tests.test_api_access import ResumeWithoutGraph
from tests.test_web_access import Organisation, organisation
from tests.web import HTMX, browser, forget_redis, image_bytes, text

pytestmark = pytest.mark.django_db

OWNER, CONSULTANT, CLIENT, INVITEE, ANONYMOUS = "owner", "consultant", "client", "invitee", None
NOT_THE_PRODUCT = ("api/", "admin/", "idp/")  # the API, the support admin, the dev provider

# Raw: percent-encoded as they are into a urlencoded body or a query string, written as they
# are into a multipart body.
PAYLOADS: dict[str, bytes] = {
    "NUL": b"a\x00b",
    "unpaired surrogate": "\ud800".encode("utf-8", "surrogatepass"),  # %ED%A0%80
    "invalid UTF-8": b"\xff",
    "huge number": str(10**30).encode(),
    "5000-digit number": b"9" * 5000,  # more digits than int() reads
    "non-ASCII digit": "\u00b2".encode(),  # "²": str.isdigit() says yes, int() says no
    "far date 9999": b"9999-12-31",
    "far date 0001": b"0001-01-01",
    "1 MB": b"x" * (1024 * 1024),
}
UNREAD = "unread"  # where a payload goes when the page reads no field
PRODUCT_400 = ("That request didn't make sense to us", "Nothing was changed")
INTERNALS = ("Traceback", 'File "', "Exception", "Error:", "psycopg", "django.", "tenants.")
PLAYBOOK_NOTE = b"# Notes\n\nAnswer within two working days."


@dataclass(frozen=True)
class Form:
    """A page that takes POST: the fields its view reads, each with a value it accepts."""

    name: str
    who: str | None
    fields: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # objects of the organisation (see `url_values`), or text
    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (filename, type)
    htmx: bool = False
    method = "POST"

    @property
    def label(self) -> str:
        return f"POST {self.name}{'/' + '/'.join(self.args) if self.args else ''}"


@dataclass(frozen=True)
class ReadOnly:
    """A page that only takes GET, with the query parameters its view reads."""

    name: str
    who: str | None
    query: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    htmx: bool = False
    method = "GET"

    @property
    def label(self) -> str:
        return f"GET {self.name}"

    @property
    def fields(self) -> dict[str, str]:
        return self.query


QUEUE_FILTERS = {
    "conversation": "{conversation}",
    "client": "{client}",
    "attention": "low",
    "q": "plan",
    "sort": "oldest",
}
PAGES: list[Form | ReadOnly] = [
    ReadOnly("home", ANONYMOUS),
    ReadOnly("healthz", ANONYMOUS),
    ReadOnly("readyz", ANONYMOUS),
    ReadOnly("login", ANONYMOUS, {"next": "/app/"}),
    Form("logout", OWNER),
    ReadOnly("oidc_authentication_init", ANONYMOUS, {"next": "/app/"}),
    ReadOnly("oidc_authentication_callback", ANONYMOUS, {"code": "c0de", "state": "st4te"}),
    ReadOnly("audit-public-key", ANONYMOUS),
    # The consultant's dashboard.
    ReadOnly("app-queue", CONSULTANT, QUEUE_FILTERS),
    ReadOnly(
        "app-queue-live",
        CONSULTANT,
        {**QUEUE_FILTERS, "shown": "{draft}", "waiting": "1"},
        htmx=True,
    ),
    Form(
        "app-draft-decide",
        CONSULTANT,
        {"text": "Offer two packages.", "note": "Shorter.", "next": "/app/?q=plan"},
        ("draft", "edit"),
        htmx=True,
    ),
    ReadOnly(
        "app-conversations",
        CONSULTANT,
        {"q": "plan", "client": "{client}", "waiting": "1", "page": "1"},
    ),
    ReadOnly("app-conversation", CONSULTANT, args=("conversation",)),
    ReadOnly("app-conversation-live", CONSULTANT, {"v": "0"}, ("conversation",), htmx=True),
    Form(
        "app-conversation-reply",
        CONSULTANT,
        {"body": "I will call you tomorrow."},
        ("conversation",),
        htmx=True,
    ),
    ReadOnly("app-playbook", CONSULTANT),
    Form(
        "app-playbook-upload",
        CONSULTANT,
        {"title": "Notes"},
        files={"file": ("notes.md", "text/markdown")},
        htmx=True,
    ),
    ReadOnly("app-document-row", CONSULTANT, args=("document",), htmx=True),
    Form("app-document-reingest", CONSULTANT, args=("document",), htmx=True),
    Form("app-document-delete", CONSULTANT, args=("document",), htmx=True),
    ReadOnly("app-tools", CONSULTANT),
    Form(
        "app-tools-change",
        OWNER,
        {
            "name": "http_request",
            "enabled": "1",
            "url": "https://crm.example.test/search",
            "method": "POST",
            "timeout": "5",
            "credential": "crm",
        },
        ("tool",),
    ),
    Form(
        "app-tools-change",
        OWNER,
        {
            "name": "Office model",
            "provider": "openai_compatible",
            "model": "llama3",
            "credential": "crm",
            "base_url": "https://llm.example.test/v1",
            "temperature": "0.3",
        },
        ("model",),
    ),
    Form("app-tools-change", OWNER, {"name": "offline"}, ("default-model",)),
    Form("app-tools-change", OWNER, {"name": "offline"}, ("remove-model",)),
    Form("app-tools-change", OWNER, {"text": "Answer briefly.", "reset": "0"}, ("prompt",)),
    Form("app-tools-change", OWNER, {"review_policy": "flagged"}, ("review-policy",)),
    ReadOnly("app-team", CONSULTANT),
    Form("app-team-invite", CONSULTANT, {"email": "ivy@example.test", "role": "client"}),
    Form("app-team-member", OWNER, {"change": "role", "role": "consultant"}, ("member",)),
    Form("app-team-invitation-revoke", OWNER, args=("invitation",)),
    ReadOnly("app-support", OWNER),
    Form("app-support-end", OWNER, args=("support_session",)),
    ReadOnly("app-settings", OWNER),
    Form(
        "app-settings",
        OWNER,
        {"action": "branding", "name": "Acme Consulting", "brand_color": "#0b7285"},
        files={"logo": ("logo.png", "image/png")},
    ),
    ReadOnly("app-logo", OWNER, {"v": "1"}),
    # The invited person, signed in, accepts; anyone may open the link.
    ReadOnly("invitation", ANONYMOUS, args=("token",)),
    Form("invitation", INVITEE, args=("token",)),
    # The client's chat.
    ReadOnly("chat", CLIENT),
    Form(
        "chat-new",
        CLIENT,
        {"question": "How do I prepare the board meeting?", "title": "Board"},
        htmx=True,
    ),
    ReadOnly("chat-thread", CLIENT, args=("conversation",)),
    Form("chat-post", CLIENT, {"body": "And the agenda?"}, ("conversation",), htmx=True),
    ReadOnly("chat-live", CLIENT, {"v": "0"}, ("conversation",), htmx=True),
    # Owners and admins.
    ReadOnly(
        "audit-log",
        OWNER,
        {
            "actor_type": "user",
            "actor_id": "{client}",
            "action": "conversation.created",
            "resource_type": "conversation",
            "resource_id": "{conversation}",
            "support": "false",
            "from": "2020-01-01T00:00",
            "to": "2099-01-01T00:00",
            "page": "1",
        },
    ),
    ReadOnly("usage-page", OWNER, {"from": "2026-01-01", "to": "2026-01-31"}),
    ReadOnly("credentials", OWNER),
    Form(
        "credentials",
        OWNER,
        {
            "name": "vendor",
            "kind": "openai_compatible",
            "secret": "vendor-token-0123456789",
            "base_url": "https://llm.example.test/v1",
        },
    ),
    Form(
        "credential-action", OWNER, {"secret": "rotated-token-0123456789"}, ("credential", "rotate")
    ),
]


# --------------------------------------------------------------------------- the routes


def walk(resolver: URLResolver, prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from walk(entry, route)
        else:
            yield route, entry


def product_routes() -> dict[str, URLPattern]:
    """Every URL pattern of the product, by name (by route when it has none)."""
    return {
        pattern.name or route: pattern
        for route, pattern in walk(get_resolver())
        if not route.startswith(NOT_THE_PRODUCT)
    }


TEXT_CONVERTERS = (StringConverter, SlugConverter, PathConverter)


def text_args(page: Form | ReadOnly) -> list[int]:
    """Positions of the URL's arguments that take text (a payload can go there too)."""
    converters = list(getattr(product_routes()[page.name].pattern, "converters", {}).values())
    return [i for i, c in enumerate(converters) if isinstance(c, TEXT_CONVERTERS)]


# --------------------------------------------------------------------------- the organisation


@dataclass
class Site:
    org: Organisation
    invitee: User

    def person(self, who: str | None) -> User | None:
        world = self.org.world
        return {
            OWNER: world.owner,
            CONSULTANT: world.consultant,
            CLIENT: world.client,
            INVITEE: self.invitee,
            ANONYMOUS: None,
        }[who]

    def values(self) -> dict[str, str]:
        """What the table's URL arguments and `{placeholders}` name."""
        org = self.org
        return {
            "conversation": str(org.conversation_id),
            "client": str(org.world.client.pk),
            "document": str(org.document.id),
            "draft": str(org.draft.id),
            "member": str(org.world.other_client.pk),
            "invitation": str(org.invitation.id),
            "support_session": str(org.support_session.id),
            "credential": str(org.credential.id),
            "token": org.invitation_link.rstrip("/").rsplit("/", 1)[-1],
        }


@pytest.fixture
def site(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    # The provider's endpoints by configuration (production may set them so too): the login
    # and logout pages then call nothing over the network.
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = "https://idp.example.test/authorize"
    settings.OIDC_OP_LOGOUT_ENDPOINT = "https://idp.example.test/logout"
    monkeypatch.setattr(runs, "build_graph", ResumeWithoutGraph)  # a decision resumes a run
    staff = UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)
    org = organisation("acme", staff)
    invitee = UserFactory.create(username=org.invitation.email, tenant=org.world.tenant)
    yield Site(org, invitee)
    forget_redis(org.world)


TENANT_MODELS = [
    model
    for model in apps.get_models()
    if issubclass(model, TenantScopedModel) and not model._meta.abstract
]


def snapshot(site: Site) -> dict[str, Any]:
    """The tenant's rows, cheaply: how many of each, its settings, the end of its audit log
    (every change the product makes is audited in the same transaction)."""
    tenant = site.org.world.tenant
    with tenant_context(tenant), audit_operator():
        seen: dict[str, Any] = {m._meta.label: m.objects.count() for m in TENANT_MODELS}
        seen["people"] = list(User.objects.order_by("pk").values_list("pk", "is_active"))
        seen["audit"] = AuditEvent.objects.aggregate(Max("seq"))["seq__max"]
        seen["tenant"] = Tenant.objects.filter(id=tenant.id).values_list(
            "name", "brand_color", "review_policy", "logo"
        )[0]
    return seen


# --------------------------------------------------------------------------- the requests


@dataclass(frozen=True)
class Hostile:
    page: Form | ReadOnly
    payload: str
    where: str  # a field, a file name, a URL argument
    htmx: bool = False

    @property
    def label(self) -> str:
        via = " (HTMX)" if self.htmx else ""
        return f"{self.page.label}{via} with {self.payload} in {self.where}"


# An HTMX form also works without JavaScript: both. An HTMX poll is only ever HTMX's.
VIA = {
    ("POST", True): (False, True),
    ("POST", False): (False,),
    ("GET", True): (True,),
    ("GET", False): (False,),
}


def hostile_requests(page: Form | ReadOnly) -> list[Hostile]:
    places = [
        *(page.fields or {UNREAD: ""}),
        *(f"file name of {f}" for f in getattr(page, "files", {})),
    ]
    places += [f"URL argument {i + 1}" for i in text_args(page)]
    return [
        Hostile(page, payload, where, htmx)
        for where in places
        for payload in PAYLOADS
        for htmx in VIA[(page.method, page.htmx)]
    ]


def encoded(value: str | bytes) -> str:
    return quote_from_bytes(value if isinstance(value, bytes) else value.encode(), safe="")


BOUNDARY = b"PageInputsBoundary"


def multipart(fields: dict[str, bytes], files: dict[str, tuple[bytes, str, bytes]]) -> bytes:
    """A multipart body written byte for byte (names and values as the payloads have them)."""
    parts = []
    for name, value in fields.items():
        head = b'Content-Disposition: form-data; name="' + name.encode() + b'"'
        parts.append(head + b"\r\n\r\n" + value)
    for name, (filename, content_type, content) in files.items():
        head = (
            b'Content-Disposition: form-data; name="'
            + name.encode()
            + b'"; filename="'
            + filename
            + b'"\r\nContent-Type: '
            + content_type.encode()
        )
        parts.append(head + b"\r\n\r\n" + content)
    body = b"".join(b"--" + BOUNDARY + b"\r\n" + part + b"\r\n" for part in parts)
    return body + b"--" + BOUNDARY + b"--\r\n"


def send(site: Site, hostile: Hostile) -> Any:
    """The request, with the payload in its place (none: the page's own values only)."""
    page, payload = hostile.page, PAYLOADS.get(hostile.payload, b"")
    values = site.values()
    args = [values.get(arg, arg) for arg in page.args]
    hostile_arg = None
    if hostile.where.startswith("URL argument"):
        hostile_arg = int(hostile.where.rsplit(" ", 1)[1]) - 1
        args[hostile_arg] = "hostilearg"
    path = reverse(page.name, args=args)
    if hostile_arg is not None:
        path = path.replace("hostilearg", encoded(payload))
    fields: dict[str, bytes] = {
        name: value.format(**values).encode() for name, value in page.fields.items()
    }
    if hostile.payload and (hostile.where in fields or hostile.where == UNREAD):
        fields[hostile.where] = payload
    client = browser(site.person(page.who))
    headers = HTMX if hostile.htmx else {}
    if isinstance(page, ReadOnly):
        query = "&".join(f"{encoded(k)}={encoded(v)}" for k, v in fields.items())
        return client.get(f"{path}?{query}" if query else path, headers=headers)
    if page.files:
        files = {}
        for name, (filename, content_type) in page.files.items():
            content = image_bytes() if content_type.startswith("image/") else PLAYBOOK_NOTE
            hostile_name = hostile.payload and hostile.where == f"file name of {name}"
            chosen = payload if hostile_name else filename.encode()
            files[name] = (chosen, content_type, content)
        body = multipart(fields, files)
        content_type = f"multipart/form-data; boundary={BOUNDARY.decode()}"
    else:
        body = "&".join(f"{encoded(k)}={encoded(v)}" for k, v in fields.items()).encode()
        content_type = "application/x-www-form-urlencoded"
    return client.post(path, body, content_type=content_type, headers=headers)


def product_page(response: Any, label: str) -> str:
    """An HTML page of the product, in its words: no traceback, no internal name."""
    assert response["Content-Type"].startswith("text/html"), label
    page = text(response)
    for internal in INTERNALS:
        assert internal not in page, f"{label}: the page shows {internal!r}"
    return page


PARAMS = [pytest.param(page, id=page.label) for page in PAGES]


@pytest.mark.parametrize("page", PARAMS)
def test_hostile_input_in_every_field_is_never_a_5xx(site: Site, page: Form | ReadOnly) -> None:
    for hostile in hostile_requests(page):
        with transaction.atomic():  # each request in its own savepoint
            before = snapshot(site) if hostile.payload == "NUL" else None
            try:
                response = send(site, hostile)
            except Exception as exc:  # the test client re-raises what became a 500
                raise AssertionError(f"{hostile.label}: raised {exc!r}") from exc
            after = snapshot(site) if before is not None else None
            transaction.set_rollback(True)
        status = response.status_code
        assert status < 500, f"{hostile.label}: {status} {response.content[:300]!r}"
        if status == 400:
            shown = product_page(response, hostile.label)
            if not hostile.htmx:  # a whole page, in the product's layout
                assert '<header class="topbar">' in shown, hostile.label
        # Django drops unprintable characters from an upload's file name as it parses the
        # body (MultiPartParser.sanitize_file_name): no NUL is left there to refuse.
        if hostile.payload == "NUL" and not hostile.where.startswith("file name"):
            assert status == 400, f"{hostile.label}: {status}"
            shown = product_page(response, hostile.label)
            assert all(words in shown for words in PRODUCT_400), hostile.label
            assert after == before, f"{hostile.label}: the tenant's rows changed"


# --------------------------------------------------------------------------- the guard


def test_the_table_classifies_every_page_of_the_product(site: Site) -> None:
    """A route of config.urls (outside /api/, /admin/ and /idp/) that PAGES does not name
    fails here; so does a read-only page that starts taking POST (a new form)."""
    routes = product_routes()
    classified = {page.name for page in PAGES}
    assert set(routes) <= classified, f"classify in PAGES: {sorted(set(routes) - classified)}"
    assert classified <= set(routes), f"no such route: {sorted(classified - set(routes))}"
    forms = {page.name for page in PAGES if isinstance(page, Form)}
    values = site.values()
    for page in PAGES:
        if isinstance(page, ReadOnly) and page.name not in forms:
            path = reverse(page.name, args=[values.get(a, a) for a in page.args])
            client = browser(site.person(page.who))
            with transaction.atomic():
                status = client.post(path, {"x": "1"}).status_code
                transaction.set_rollback(True)
            assert status == 405, f"{page.name} takes POST: classify it as a Form ({status})"
    # Each URL argument of a route is one the table knows how to build.
    for page in PAGES:
        converters = getattr(routes[page.name].pattern, "converters", {})
        assert len(page.args) == len(converters), page.label


def test_the_snapshot_sees_what_a_form_changes(site: Site) -> None:
    """The NUL checks above compare snapshots: one must differ when a page changes a row."""
    (ask,) = [page for page in PAGES if page.name == "chat-new"]
    before = snapshot(site)
    response = send(site, Hostile(ask, payload="", where="nothing"))
    assert response.status_code == 302
    assert snapshot(site) != before


def test_the_conversations_filter_reads_only_real_client_ids(site: Site) -> None:
    """`?client=` filters by a user id; "²" or 5000 digits (once a 500) filter nothing."""
    world = site.org.world
    consultant = browser(world.consultant)
    url = reverse("app-conversations")
    theirs = world.conversations[1].title  # the other client's
    mine = consultant.get(url, {"client": world.client.pk})
    assert mine.status_code == 200
    assert world.conversations[0].title in text(mine) and theirs not in text(mine)
    for junk in ("\u00b2", "9" * 5000):
        response = consultant.get(url, {"client": junk})
        assert response.status_code == 200
        assert theirs in text(response)
