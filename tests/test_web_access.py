"""Who may open which page of the web UI: every routed page and form, every kind of person.

A visitor who is not signed in is sent to the login page (and back afterwards); a client
on the dashboard, the team in the chat, a consultant on an owners-and-admins page, or an
account without an organisation gets the 403 page saying why; another organisation's
conversation, document, draft, invitation, support session, credential or member is the
404 page, exactly as for an id that never existed. Paths under /api/ answer in JSON.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, reverse
from django.urls.converters import IntConverter, UUIDConverter
from django.utils.html import escape

from accounts import actions as team_actions
from accounts.models import Invitation, Membership, SupportSession, User
from accounts.pages import NO_TENANT_MESSAGE
from accounts.support import open_support_session
from agents.models import AgentRun, Document
from config import urls
from conversations.models import Message
from conversations.views.chat import CHAT_ONLY
from tenants.actions import set_logo
from tenants.context import tenant_context
from tenants.models import Credential
from tenants.vault.service import create_credential
from tests.factories import UserFactory, World, build_world
from tests.web import browser, forget_redis, image_bytes, login_redirect, text, without_csrf

pytestmark = pytest.mark.django_db

ROLE_MESSAGE = "Your role in this organisation does not include this page."
SETTINGS_MESSAGE = "Only your organisation's owners and admins change its settings."
TOOLS_MESSAGE = "Only your organisation's owners and admins change the agent."
SUPPORT_MESSAGE = "Only your organisation's owners and admins see support access."
SUPPORT_END_MESSAGE = "Only your organisation's owners and admins end support access."
AUDIT_MESSAGE = "Only your organisation's owners and admins read the audit log."
USAGE_MESSAGE = "Only your organisation's owners and admins see its usage."
CREDENTIALS_MESSAGE = "Only your organisation's owners and admins manage credentials."


@dataclass
class Organisation:
    world: World
    admin: User
    outsider: User  # an account of the tenant with no role in it
    document: Document
    draft: Message  # an AI draft waiting for review, in the first client's conversation
    invitation: Invitation
    invitation_link: str
    support_session: SupportSession
    credential: Credential

    @property
    def conversation_id(self) -> uuid.UUID:
        return self.world.conversations[0].id  # the first client's


def organisation(slug: str, staff: User) -> Organisation:
    world = build_world(slug, conversation_title=f"{slug.title()} plan")
    admin = UserFactory.create(username=f"ada@{slug}.test", tenant=world.tenant, first_name="Ada")
    outsider = UserFactory.create(username=f"otto@{slug}.test", tenant=world.tenant)
    session = open_support_session(
        staff=staff, tenant=world.tenant, reason="Ticket 12: the chat does not load"
    )
    with tenant_context(world.tenant):
        Membership.objects.create(user=admin, role=Membership.Role.ADMIN)
        document = Document.objects.create(
            title="Discovery",
            filename="discovery.md",
            content_type="text/markdown",
            size=9,
            sha256="0" * 64,
            source=b"# Pricing",
            status=Document.Status.READY,
            created_by=world.consultant,
        )
        conversation = world.conversations[0]
        draft = Message.objects.create(
            conversation=conversation,
            sender=Message.Sender.AGENT,
            status=Message.Status.DRAFT,
            body="Offer three packages.",
        )
        AgentRun.objects.create(
            conversation=conversation,
            trigger_message=conversation.messages.first(),
            requested_by=world.client,
            status=AgentRun.Status.AWAITING_REVIEW,
            draft_message=draft,
        )
        issued = team_actions.invite(
            acting_user=world.owner,
            acting_role="owner",
            email=f"nina@{slug}.test",
            role="client",
            site_url="http://testserver",
        )
        credential = create_credential(
            acting_user=world.owner, name="crm", kind="http_bearer", secret=f"{slug}-token-" * 3
        )
        set_logo(acting_user=world.owner, data=image_bytes())
    return Organisation(
        world,
        admin,
        outsider,
        document,
        draft,
        issued.invitation,
        issued.link,
        session,
        credential,
    )


@pytest.fixture
def staff() -> User:
    return UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True)


@pytest.fixture
def acme(staff: User) -> Iterator[Organisation]:
    org = organisation("acme", staff)
    yield org
    forget_redis(org.world)


@pytest.fixture
def globex(staff: User) -> Iterator[Organisation]:
    org = organisation("globex", staff)
    yield org
    forget_redis(org.world)


# --------------------------------------------------------------------------- the routes

# Who a route admits: the team (owners, admins, consultants), owners and admins, clients,
# any signed-in account of the tenant (the logo), or anyone (a public page).
TEAM, ADMINS, CLIENTS, ACCOUNTS, PUBLIC = "team", "admins", "clients", "accounts", "public"


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    admits: str
    ok: int  # the status for a person the route admits (with a valid body)
    args: tuple[str, ...] = ()  # fixture objects named in the URL, in order
    refusal: str = ROLE_MESSAGE  # what the 403 page says to a role it does not admit
    body: Callable[[Organisation], dict[str, Any]] | None = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.name}"


def upload(org: Organisation) -> dict[str, Any]:
    notes = b"# Notes\n\nAnswer within two working days."
    return {"file": SimpleUploadedFile("notes.md", notes, content_type="text/markdown")}


ROUTES: list[Route] = [
    Route("home", "GET", PUBLIC, 200),
    Route("app-queue", "GET", TEAM, 200),
    Route("app-queue-live", "GET", TEAM, 200),
    # An empty edit is refused before anything is sent: admitted, nothing changes.
    Route("app-draft-decide", "POST", TEAM, 302, ("draft", "edit"), body=lambda o: {"text": ""}),
    Route("app-conversations", "GET", TEAM, 200),
    Route("app-conversation", "GET", TEAM, 200, ("conversation",)),
    Route("app-conversation-live", "GET", TEAM, 200, ("conversation",)),
    Route(
        "app-conversation-reply",
        "POST",
        TEAM,
        302,
        ("conversation",),
        body=lambda o: {"body": "I will call you tomorrow."},
    ),
    Route("app-playbook", "GET", TEAM, 200),
    Route("app-playbook-upload", "POST", TEAM, 302, body=upload),
    Route("app-document-row", "GET", TEAM, 200, ("document",)),
    Route("app-document-reingest", "POST", TEAM, 302, ("document",)),
    Route("app-document-delete", "POST", TEAM, 302, ("document",)),  # after the others
    Route("app-tools", "GET", TEAM, 200),
    Route(
        "app-tools-change",
        "POST",
        ADMINS,
        302,
        ("review-policy",),
        refusal=TOOLS_MESSAGE,
        body=lambda o: {"review_policy": "flagged"},
    ),
    Route("app-team", "GET", TEAM, 200),
    Route(
        "app-team-invite",
        "POST",
        TEAM,
        200,
        body=lambda o: {"email": f"ivy-{uuid.uuid4().hex[:6]}@example.test", "role": "client"},
    ),
    Route(
        "app-team-member",
        "POST",
        TEAM,
        302,
        ("member",),
        body=lambda o: {"change": "role", "role": "client"},
    ),
    Route("invitation", "GET", PUBLIC, 200, ("token",)),  # before its revocation
    Route("app-team-invitation-revoke", "POST", TEAM, 302, ("invitation",)),
    Route("app-support", "GET", ADMINS, 200, refusal=SUPPORT_MESSAGE),
    Route("app-support-end", "POST", ADMINS, 302, ("support_session",), SUPPORT_END_MESSAGE),
    Route("app-settings", "GET", ADMINS, 200, refusal=SETTINGS_MESSAGE),
    Route(
        "app-settings",
        "POST",
        ADMINS,
        302,
        refusal=SETTINGS_MESSAGE,
        body=lambda o: {"name": o.world.tenant.name, "brand_color": "#0b7285"},
    ),
    Route("app-logo", "GET", ACCOUNTS, 200),
    Route("chat", "GET", CLIENTS, 200, refusal=CHAT_ONLY),
    Route(
        "chat-new",
        "POST",
        CLIENTS,
        302,
        refusal=CHAT_ONLY,
        body=lambda o: {"question": "How do I prepare the board meeting?"},
    ),
    Route("chat-thread", "GET", CLIENTS, 200, ("conversation",), CHAT_ONLY),
    Route("chat-live", "GET", CLIENTS, 200, ("conversation",), CHAT_ONLY),
    Route(
        "chat-post",
        "POST",
        CLIENTS,
        302,
        ("conversation",),
        CHAT_ONLY,
        body=lambda o: {"body": "And the agenda?"},
    ),
    Route("audit-log", "GET", ADMINS, 200, refusal=AUDIT_MESSAGE),
    Route("usage-page", "GET", ADMINS, 200, refusal=USAGE_MESSAGE),
    Route("credentials", "GET", ADMINS, 200, refusal=CREDENTIALS_MESSAGE),
    Route(
        "credentials",
        "POST",
        ADMINS,
        302,
        refusal=CREDENTIALS_MESSAGE,
        body=lambda o: {
            "name": f"vendor-{uuid.uuid4().hex[:6]}",
            "kind": "http_bearer",
            "secret": "vendor-token-0123456789",
        },
    ),
    Route(
        "credential-action",
        "POST",
        ADMINS,
        302,
        ("credential", "rotate"),
        CREDENTIALS_MESSAGE,
        body=lambda o: {"secret": "rotated-token-0123456789"},
    ),
]
OBJECT_ARGS = frozenset(
    {"conversation", "document", "draft", "member", "invitation", "support_session", "credential"}
)
OBJECT_ROUTES = [r for r in ROUTES if OBJECT_ARGS & set(r.args)]

# Named routes that are not pages for people: the API, health probes, the login machinery.
NOT_PAGES = {
    "healthz",
    "readyz",
    "login",
    "logout",
    "oidc_authentication_init",
    "oidc_authentication_callback",
    "me",
    "audit-export",
    "audit-public-key",
    "registry",
    "usage",
    "schema",
    "api-docs",
}


def url_of(route: Route, org: Organisation) -> str:
    values = {
        "conversation": org.conversation_id,
        "document": org.document.id,
        "draft": org.draft.id,
        "member": org.world.other_client.pk,
        "invitation": org.invitation.id,
        "support_session": org.support_session.id,
        "credential": org.credential.id,
        "token": org.invitation_link.rstrip("/").rsplit("/", 1)[-1],
    }
    return reverse(route.name, args=[values.get(arg, arg) for arg in route.args])


def missing_url(route: Route) -> str:
    """The route's URL with an id that never existed in place of the object's."""
    args: list[Any] = []
    for arg in route.args:
        if arg == "member":
            args.append(2**31 - 1)
        elif arg in OBJECT_ARGS:
            args.append(uuid.uuid4())
        else:
            args.append(arg)
    return reverse(route.name, args=args)


def request(client: Client, route: Route, url: str, org: Organisation, **headers: Any) -> Any:
    if route.method == "GET":
        return client.get(url, headers=headers)
    return client.post(url, route.body(org) if route.body else {}, headers=headers)


PEOPLE = ["anonymous", "staff", "outsider", "client", "consultant", "admin", "owner"]


def person(name: str, org: Organisation, staff: User) -> User | None:
    return {
        "anonymous": None,
        "staff": staff,
        "outsider": org.outsider,
        "client": org.world.client,
        "consultant": org.world.consultant,
        "admin": org.admin,
        "owner": org.world.owner,
    }[name]


def admitted(name: str, route: Route) -> bool:
    return {
        TEAM: name in ("consultant", "admin", "owner"),
        ADMINS: name in ("admin", "owner"),
        CLIENTS: name == "client",
        ACCOUNTS: name not in ("anonymous", "staff"),
        PUBLIC: True,
    }[route.admits]


def expected(name: str, route: Route) -> tuple[int, str]:
    """(status, what the page says or where it sends the browser)."""
    if route.name == "home" and name in ("client", "consultant", "admin", "owner"):
        return 302, "/chat/" if name == "client" else "/app/"
    if admitted(name, route):
        return route.ok, ""
    if route.admits == ACCOUNTS:  # the logo: nothing to see for who has no organisation
        return 404, ""
    if name == "anonymous":
        return 302, "login"
    if name == "staff":  # an account of no organisation (accounts.pages.tenant_page)
        return 403, NO_TENANT_MESSAGE
    return 403, route.refusal


# --------------------------------------------------------------------------- the guard


def test_the_matrix_covers_every_page_of_the_ui() -> None:
    named = {p.name for p in urls.urlpatterns if isinstance(p, URLPattern) and p.name}
    pages = {r.name for r in ROUTES}
    unclassified = named - pages - NOT_PAGES
    assert not unclassified, f"new routes: add them to ROUTES (or NOT_PAGES): {unclassified}"
    assert pages <= named
    assert {n for n in named if n.startswith(("app-", "chat"))} <= pages
    # A page whose URL names an object by id is in the cross-tenant test too.
    by_id = {
        p.name
        for p in urls.urlpatterns
        if isinstance(p, URLPattern)
        and p.name in pages
        and any(
            isinstance(c, UUIDConverter | IntConverter)
            for c in getattr(p.pattern, "converters", {}).values()
        )
    }
    assert by_id == {r.name for r in OBJECT_ROUTES}


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("name", PEOPLE)
def test_each_person_reaches_exactly_the_pages_of_their_role(
    acme: Organisation, staff: User, name: str
) -> None:
    client = browser(person(name, acme, staff))
    actual: dict[str, Any] = {}
    wanted: dict[str, Any] = {}
    for route in ROUTES:
        url = url_of(route, acme)
        response = request(client, route, url, acme)
        status, says = expected(name, route)
        actual[route.label] = response.status_code
        wanted[route.label] = status
        if response.status_code != status:
            continue
        if status == 302 and says == "login":
            assert response["Location"] == login_redirect(url), route.label
        elif status == 302 and says:
            assert response["Location"] == says, route.label
        elif status == 403:
            assert response["Content-Type"].startswith("text/html"), route.label
            page = text(response)
            assert "have access to this page" in page, route.label
            assert escape(says) in page, (route.label, says)
            assert "Go to your home page" in page
        elif status == 302:  # a form that worked goes back to its page
            assert not response["Location"].startswith("/login/"), route.label
    assert actual == wanted


def test_an_anonymous_htmx_poll_sends_the_whole_browser_to_the_login_page(
    acme: Organisation,
) -> None:
    """A poll or form of a page whose session has ended must not swap the login page into
    the thread or the queue: a 401 whose HX-Redirect sends the browser to sign in, and back
    to the page it showed."""
    shown = f"http://testserver/chat/{acme.conversation_id}/"
    for name, args in (
        ("app-queue-live", []),
        ("chat-live", [acme.conversation_id]),
        ("app-conversation-live", [acme.conversation_id]),
    ):
        url = reverse(name, args=args)
        response = Client().get(url, headers={"HX-Request": "true", "HX-Current-URL": shown})
        assert response.status_code == 401
        assert response["HX-Redirect"] == login_redirect(f"/chat/{acme.conversation_id}/")
        # A foreign page named by the header is not a place to come back to.
        foreign = Client().get(
            url, headers={"HX-Request": "true", "HX-Current-URL": "https://evil.example/x"}
        )
        assert foreign["HX-Redirect"] == login_redirect(url)


def test_the_403_page_says_why_and_offers_the_way_home(acme: Organisation) -> None:
    consultant = browser(acme.world.consultant)
    refused = consultant.get(reverse("app-settings"))
    assert refused.status_code == 403
    page = text(refused)
    assert "<title>No access · Acme</title>" in page
    assert escape(SETTINGS_MESSAGE) in page
    assert 'href="/"' in page  # "Go to your home page"

    team_in_chat = consultant.get(reverse("chat"))
    assert team_in_chat.status_code == 403
    assert escape(CHAT_ONLY) in text(team_in_chat)

    client_on_dashboard = browser(acme.world.client).get(reverse("app-queue"))
    assert client_on_dashboard.status_code == 403
    assert ROLE_MESSAGE in text(client_on_dashboard)
    assert "Review queue" not in text(client_on_dashboard)  # no dashboard navigation


# --------------------------------------------------------------------------- 404, never a hint


def person_for(route: Route, org: Organisation) -> User:
    return org.world.client if route.admits == CLIENTS else org.world.owner


@pytest.mark.parametrize("route", OBJECT_ROUTES, ids=lambda r: r.label)
def test_another_organisations_object_is_the_404_page_of_a_missing_one(
    acme: Organisation, globex: Organisation, route: Route
) -> None:
    client = browser(person_for(route, acme))
    theirs = request(client, route, url_of(route, globex), acme)
    missing = request(client, route, missing_url(route), acme)
    assert theirs.status_code == missing.status_code == 404, text(theirs)[:500]
    assert theirs["Content-Type"].startswith("text/html")
    assert "find that page" in text(theirs)
    assert without_csrf(theirs) == without_csrf(missing)
    # The HTMX twin of the request is refused the same way.
    fragment = request(client, route, url_of(route, globex), acme, **{"HX-Request": "true"})
    assert fragment.status_code == 404

    # Nothing of globex's changed.
    world = globex.world
    with tenant_context(world.tenant):
        assert Document.objects.filter(id=globex.document.id).exists()
        draft = Message.objects.get(id=globex.draft.id)
        assert (draft.status, draft.body) == (Message.Status.DRAFT, "Offer three packages.")
        assert Message.objects.filter(conversation_id=globex.conversation_id).count() == 2
        assert Invitation.objects.get(id=globex.invitation.id).revoked_at is None
        assert SupportSession.objects.get(id=globex.support_session.id).ended_at is None
        credential = Credential.objects.get(id=globex.credential.id)
        assert (credential.rotated_at, credential.last_four) == (None, globex.credential.last_four)
        assert Membership.objects.get(user=world.other_client).role == "client"


def test_a_client_cannot_open_another_clients_conversation(acme: Organisation) -> None:
    theirs = acme.world.conversations[1]  # the other client's, same organisation
    client = browser(acme.world.client)
    for name in ("chat-thread", "chat-live"):
        response = client.get(reverse(name, args=[theirs.id]))
        control = client.get(reverse(name, args=[uuid.uuid4()]))
        assert response.status_code == control.status_code == 404
        assert without_csrf(response) == without_csrf(control)
    posted = client.post(reverse("chat-post", args=[theirs.id]), {"body": "Let me in"})
    assert posted.status_code == 404
    with tenant_context(acme.world.tenant):
        assert not Message.objects.filter(body="Let me in").exists()


# --------------------------------------------------------------------------- error pages


def test_an_unknown_api_path_is_a_json_404() -> None:
    response = Client().get("/api/v1/no-such-thing/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"code": "not_found", "message": "Not found."}


def test_an_unknown_page_is_the_html_404_page(acme: Organisation) -> None:
    for client in (Client(), browser(acme.world.consultant)):
        response = client.get("/no-such-page/")
        assert response.status_code == 404
        assert response["Content-Type"].startswith("text/html")
        page = text(response)
        assert "find that page" in page
        assert "Go to your home page" in page


def test_a_page_that_does_not_take_the_method_is_refused_without_a_change(
    acme: Organisation,
) -> None:
    consultant = browser(acme.world.consultant)
    assert (
        consultant.get(reverse("app-document-delete", args=[acme.document.id])).status_code == 405
    )
    assert consultant.post(reverse("app-queue")).status_code == 405
    with tenant_context(acme.world.tenant):
        assert Document.objects.filter(id=acme.document.id).exists()


def test_a_forged_form_without_the_csrf_token_changes_nothing(acme: Organisation) -> None:
    forged = Client(enforce_csrf_checks=True)
    forged.force_login(acme.world.owner)
    response = forged.post(reverse("app-document-delete", args=[acme.document.id]))
    assert response.status_code == 403
    with tenant_context(acme.world.tenant):
        assert Document.objects.filter(id=acme.document.id).exists()
