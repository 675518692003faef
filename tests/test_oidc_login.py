"""Browser login through OpenID Connect, end to end against the local provider.

A real HTTP client walks the authorization code flow with PKCE: Playbook redirects to the
provider, the person signs in there, the provider redirects back with a code, Playbook
exchanges it (server to server) for a real RS256-signed ID token, verifies it against the
provider's JWKS, binds the account to the tenant claim and opens a session. No step is faked.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt
import pytest
import requests
from django.conf import settings
from django.db import ProgrammingError, connection, transaction
from django.test import override_settings
from oauth2_provider.models import get_application_model

from accounts import oidc
from accounts.models import Membership, User
from accounts.queries import find_user
from accounts.sessions import SessionStore
from audit.actions import audit_operator
from audit.models import AuditEvent
from devidp.clients import ensure_web_client
from devidp.models import DevIdentity
from tenants.context import directory_context, tenant_context
from tests.factories import TenantFactory, UserFactory, World, build_world

PASSWORD = "correct horse battery"  # tests.factories.UserFactory's password


@dataclass
class Provider:
    url: str  # Playbook (relying party)
    issuer: str  # the local provider, mounted at /idp


@pytest.fixture
def provider(live_server_url: str) -> Iterator[Provider]:
    issuer = f"{live_server_url}/idp"
    oauth2 = {**settings.OAUTH2_PROVIDER, "OIDC_ISS_ENDPOINT": issuer}
    with override_settings(SITE_URL=live_server_url, OIDC_ISSUER=issuer, OAUTH2_PROVIDER=oauth2):
        oidc.reset_caches()
        ensure_web_client([f"{live_server_url}/oidc/callback/"], [f"{live_server_url}/"])
        yield Provider(url=live_server_url, issuer=issuer)
    oidc.reset_caches()


def give_identity(user: User, *, tenant_claim: str, roles: list[str]) -> DevIdentity:
    with directory_context():  # the provider's directory (devidp migration 0002)
        return DevIdentity.objects.create(user=user, tenant_claim=tenant_claim, roles=roles)


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def sign_in(browser: requests.Session, provider: Provider, username: str) -> requests.Response:
    """Walk the authorization code flow; return Playbook's answer to the callback."""
    start = browser.get(f"{provider.url}/oidc/authenticate/?next=/api/v1/me", allow_redirects=False)
    assert start.status_code == 302
    authorize = start.headers["Location"]
    assert authorize.startswith(f"{provider.issuer}/authorize/")
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["nonce"][0] and query["state"][0]

    to_login = browser.get(authorize, allow_redirects=False)
    assert to_login.status_code == 302 and "/idp/login/" in to_login.headers["Location"]
    login_url = urljoin(provider.url, to_login.headers["Location"])
    form = browser.get(login_url)
    signed_in = browser.post(
        login_url,
        data={
            "csrfmiddlewaretoken": csrf_token(form.text),
            "username": username,
            "password": PASSWORD,
            "next": parse_qs(urlsplit(login_url).query)["next"][0],
        },
        headers={"Referer": login_url},
        allow_redirects=False,
    )
    assert signed_in.status_code == 302, signed_in.text[:500]
    back = browser.get(urljoin(provider.url, signed_in.headers["Location"]), allow_redirects=False)
    assert back.status_code == 302
    callback = back.headers["Location"]
    assert callback.startswith(f"{provider.url}/oidc/callback/?")
    assert "code" in parse_qs(urlsplit(callback).query)
    return browser.get(callback, allow_redirects=False)


def test_first_login_binds_the_tenant_from_the_signed_claim(provider: Provider) -> None:
    acme = build_world("acme")
    # A person known to the provider only, never seen by Playbook: no tenant yet.
    newcomer = UserFactory.create(username="nina@acme.test", tenant=None, first_name="Nina")
    identity = give_identity(newcomer, tenant_claim=str(acme.tenant.id), roles=["consultant"])

    browser = requests.Session()
    answer = sign_in(browser, provider, "nina@acme.test")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/api/v1/me"

    me = browser.get(f"{provider.url}/api/v1/me").json()
    assert me["tenant"]["id"] == str(acme.tenant.id)
    assert me["role"] == "consultant"
    assert me["auth"] == "session"

    # Playbook's own account for this subject, bound to the claimed tenant, as it would be
    # for any external provider (the provider's directory entry is not Playbook's account).
    with tenant_context(acme.tenant):
        account = User.objects.get(oidc_issuer=provider.issuer, oidc_subject=str(identity.subject))
    assert me["id"] == str(account.pk)
    assert account.tenant_id == acme.tenant.id
    assert not account.has_usable_password()
    with tenant_context(acme.tenant), audit_operator():
        assert Membership.objects.get(user=account).role == "consultant"
        assert AuditEvent.objects.filter(action="auth.login", actor_id=str(account.pk)).count() == 1

    # A second login finds the same account.
    again = requests.Session()
    assert sign_in(again, provider, "nina@acme.test").status_code == 302
    assert again.get(f"{provider.url}/api/v1/me").json()["id"] == str(account.pk)
    with tenant_context(acme.tenant):
        assert User.objects.filter(oidc_subject=str(identity.subject)).count() == 1

    # The sessions are in Redis: the app's role may not even read the database's table.
    with (
        pytest.raises(ProgrammingError, match="permission denied"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT count(*) FROM django_session")

    # The session holds a real ID token, RS256-signed by the provider's published key.
    session = SessionStore(browser.cookies["sessionid"])
    id_token = session["oidc_id_token"]
    header = jwt.get_unverified_header(id_token)
    assert header["alg"] == "RS256"
    jwks = requests.get(f"{provider.issuer}/.well-known/jwks.json", timeout=10).json()
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(
        id_token,
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience=settings.OIDC_RP_CLIENT_ID,
        issuer=provider.issuer,
    )
    assert claims["sub"] == str(identity.subject)
    assert claims[settings.OIDC_TENANT_CLAIM] == str(acme.tenant.id)


def test_a_changed_tenant_claim_is_refused_and_recorded(provider: Provider) -> None:
    acme, globex = build_world("acme"), build_world("globex")
    identity = give_identity(
        acme.consultant, tenant_claim=str(acme.tenant.id), roles=["consultant"]
    )
    first = requests.Session()
    assert sign_in(first, provider, acme.consultant.username).status_code == 302

    # The provider now says this subject belongs to globex.
    identity.tenant_claim = str(globex.tenant.id)
    with directory_context():
        identity.save()
    second = requests.Session()
    refused = sign_in(second, provider, acme.consultant.username)
    assert refused.status_code == 403
    assert "belongs to another organisation" in refused.text
    assert second.get(f"{provider.url}/api/v1/me").status_code == 401  # no session
    with tenant_context(acme.tenant):
        account = User.objects.get(oidc_subject=str(identity.subject))
    assert account.tenant_id == acme.tenant.id
    with tenant_context(acme.tenant), audit_operator():
        event = AuditEvent.objects.get(action="auth.login_refused")
        assert event.context["reason"] == "tenant_claim_changed"
        assert event.context["claimed_tenant"] == str(globex.tenant.id)
    with tenant_context(globex.tenant):
        assert not Membership.objects.filter(user=account).exists()


def test_a_claim_naming_no_tenant_is_refused(provider: Provider) -> None:
    stranger = UserFactory.create(username="sam@nowhere.test", tenant=None)
    give_identity(stranger, tenant_claim="no-such-tenant", roles=["owner"])
    suspended = TenantFactory.create(slug="dormant", status="suspended")
    sleeper = UserFactory.create(username="sid@dormant.test", tenant=None)
    give_identity(sleeper, tenant_claim=str(suspended.id), roles=["owner"])
    for username in ("sam@nowhere.test", "sid@dormant.test"):
        browser = requests.Session()
        refused = sign_in(browser, provider, username)
        assert refused.status_code == 403
        assert "not on Playbook" in refused.text
        assert browser.get(f"{provider.url}/api/v1/me").status_code == 401
    directory_entry = find_user("username", "sam@nowhere.test")
    assert directory_entry is not None and directory_entry.tenant_id is None


def test_logout_ends_the_session_here_and_at_the_provider(provider: Provider) -> None:
    acme: World = build_world("acme")
    give_identity(acme.client, tenant_claim=str(acme.tenant.id), roles=["client"])
    browser = requests.Session()
    assert sign_in(browser, provider, acme.client.username).status_code == 302
    assert browser.get(f"{provider.url}/api/v1/me").status_code == 200

    session_key = str(browser.cookies["sessionid"])
    assert SessionStore().exists(session_key)
    home = browser.get(f"{provider.url}/")
    bye = browser.post(
        f"{provider.url}/logout/",
        data={"csrfmiddlewaretoken": csrf_token(home.text)},
        headers={"Referer": f"{provider.url}/"},
        allow_redirects=False,
    )
    assert bye.status_code == 302
    end_session = bye.headers["Location"]
    assert end_session.startswith(f"{provider.issuer}/logout/")
    assert "id_token_hint=" in end_session
    assert browser.get(f"{provider.url}/api/v1/me").status_code == 401
    assert not SessionStore().exists(session_key)  # gone from Redis, not merely forgotten

    back = browser.get(end_session, allow_redirects=False)
    assert back.status_code == 302
    assert back.headers["Location"] == f"{provider.url}/"
    assert "playbook_dev_idp" not in browser.cookies  # signed out at the provider too
    # Signing in again needs the password again.
    again = browser.get(f"{provider.url}/oidc/authenticate/", allow_redirects=True)
    assert "/idp/login/" in again.url


def test_the_login_page_offers_the_provider_and_survives_it_being_down(
    provider: Provider,
) -> None:
    page = requests.get(f"{provider.url}/login/", timeout=10)
    assert page.status_code == 200
    assert "/oidc/authenticate/" in page.text
    with override_settings(OIDC_ISSUER="http://127.0.0.1:9/idp"):
        oidc.reset_caches()
        down = requests.get(f"{provider.url}/oidc/authenticate/", allow_redirects=False, timeout=10)
    assert down.status_code == 503
    assert "Sign-in is unavailable" in down.text


def test_an_access_token_from_the_provider_works_on_the_api(provider: Provider) -> None:
    """A partner or mobile app: its own public client, PKCE, then a JWT bearer on the API."""
    acme = build_world("acme")
    give_identity(acme.consultant, tenant_claim=str(acme.tenant.id), roles=["consultant"])
    application_model = get_application_model()
    with directory_context():  # the provider's clients (devidp migration 0002)
        application_model.objects.create(
            name="Mobile",
            client_id="playbook-mobile",
            client_type=application_model.CLIENT_PUBLIC,
            authorization_grant_type=application_model.GRANT_AUTHORIZATION_CODE,
            redirect_uris="http://127.0.0.1/mobile-callback",
            algorithm=application_model.RS256_ALGORITHM,
            skip_authorization=True,
        )
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    browser = requests.Session()
    authorize = (
        f"{provider.issuer}/authorize/?response_type=code&client_id=playbook-mobile"
        "&redirect_uri=http://127.0.0.1/mobile-callback&scope=openid"
        f"&code_challenge={challenge.rstrip(b'=').decode()}&code_challenge_method=S256"
    )
    to_login = browser.get(authorize, allow_redirects=False)
    login_url = urljoin(provider.url, to_login.headers["Location"])
    form = browser.get(login_url)
    browser.post(
        login_url,
        data={
            "csrfmiddlewaretoken": csrf_token(form.text),
            "username": acme.consultant.username,
            "password": PASSWORD,
            "next": parse_qs(urlsplit(login_url).query)["next"][0],
        },
        headers={"Referer": login_url},
        allow_redirects=False,
    )
    back = browser.get(authorize, allow_redirects=False)
    code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]
    tokens = requests.post(
        f"{provider.issuer}/token/",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://127.0.0.1/mobile-callback",
            "client_id": "playbook-mobile",
            "code_verifier": verifier,
        },
        timeout=10,
    ).json()
    access = tokens["access_token"]
    assert jwt.get_unverified_header(access)["alg"] == "RS256"
    assert jwt.decode(access, options={"verify_signature": False})["aud"] == "playbook-api"

    me = requests.get(
        f"{provider.url}/api/v1/me", headers={"Authorization": f"Bearer {access}"}, timeout=10
    )
    assert me.status_code == 200, me.text
    assert me.json()["tenant"]["id"] == str(acme.tenant.id)
    assert me.json()["auth"] == "jwt"
    listed = requests.get(
        f"{provider.url}/api/v1/conversations/",
        headers={"Authorization": f"Bearer {access}"},
        timeout=10,
    ).json()
    assert {c["id"] for c in listed["results"]} == acme.conversation_ids
    # The ID token is not an API credential: wrong audience.
    refused = requests.get(
        f"{provider.url}/api/v1/me",
        headers={"Authorization": f"Bearer {tokens['id_token']}"},
        timeout=10,
    )
    assert refused.status_code == 401
