"""Register Playbook's web app as a client of the local provider (idempotent)."""

from __future__ import annotations

from django.conf import settings
from oauth2_provider.models import get_application_model

from tenants.context import directory_context


def ensure_web_client(redirect_uris: list[str], post_logout_uris: list[str]) -> None:
    """The provider's tables are read and written in its directory context (migration 0002)."""
    with directory_context():
        _save_web_client(redirect_uris, post_logout_uris)


def _save_web_client(redirect_uris: list[str], post_logout_uris: list[str]) -> None:
    Application = get_application_model()
    app = Application.objects.filter(client_id=settings.OIDC_RP_CLIENT_ID).first()
    if app is None:
        app = Application(client_id=settings.OIDC_RP_CLIENT_ID)
    app.name = "Playbook web"
    app.client_type = Application.CLIENT_CONFIDENTIAL
    app.authorization_grant_type = Application.GRANT_AUTHORIZATION_CODE
    app.algorithm = Application.RS256_ALGORITHM
    app.skip_authorization = True
    app.client_secret = settings.OIDC_RP_CLIENT_SECRET  # hashed on save
    app.redirect_uris = " ".join(redirect_uris)
    app.post_logout_redirect_uris = " ".join(post_logout_uris)
    app.save()


def site_uris(site_url: str) -> tuple[list[str], list[str]]:
    hosts = {site_url.rstrip("/")}
    if "127.0.0.1" in site_url:
        hosts.add(site_url.replace("127.0.0.1", "localhost").rstrip("/"))
    return (
        sorted(f"{host}/oidc/callback/" for host in hosts),
        sorted(f"{host}/" for host in hosts),
    )
