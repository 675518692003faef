from django.conf import settings
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from accounts import api as accounts_api
from accounts import team_views
from accounts import views as accounts_views
from accounts.admin import support_admin_site
from agents import api as agents_api
from agents import documents_api
from agents import views as agents_views
from audit import api as audit_api
from audit import views as audit_views
from billing import api as billing_api
from billing import views as billing_views
from config import views
from conversations import review_api
from conversations.api import ConversationViewSet
from conversations.views import chat, queue, team
from tenants import views as tenant_views
from tenants.vault import api as vault_api
from tenants.vault import views as vault_views

router = DefaultRouter()
router.register("conversations", ConversationViewSet, basename="conversation")
router.register("api-keys", accounts_api.ApiKeyViewSet, basename="api-key")
router.register("support-sessions", accounts_api.SupportSessionViewSet, basename="support-session")
router.register("audit/events", audit_api.AuditEventViewSet, basename="audit-event")
router.register("documents", documents_api.DocumentViewSet, basename="document")
router.register("agent-runs", agents_api.AgentRunViewSet, basename="agent-run")
router.register("registry/entitlements", agents_api.EntitlementViewSet, basename="entitlement")
router.register("review-queue", review_api.ReviewQueueViewSet, basename="review-queue")
router.register("credentials", vault_api.CredentialViewSet, basename="credential")

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("login/", accounts_views.login_page, name="login"),
    path("logout/", accounts_views.TenantOIDCLogoutView.as_view(), name="logout"),
    path(
        "oidc/authenticate/",
        accounts_views.TenantOIDCAuthenticationRequestView.as_view(),
        name="oidc_authentication_init",
    ),
    path(
        "oidc/callback/",
        accounts_views.TenantOIDCCallbackView.as_view(),
        name="oidc_authentication_callback",
    ),
    path("admin/", support_admin_site.urls),
    path("api/v1/me", accounts_api.MeView.as_view(), name="me"),
    path(
        "api/v1/audit/export",
        audit_api.AuditExportViewSet.as_view({"get": "export"}),
        name="audit-export",
    ),
    path(".well-known/playbook-audit-key", audit_api.public_key, name="audit-public-key"),
    path(
        "api/v1/registry/",
        agents_api.RegistryViewSet.as_view({"get": "resolved"}),
        name="registry",
    ),
    path(
        "api/v1/usage/",
        billing_api.UsageViewSet.as_view({"get": "summary"}),
        name="usage",
    ),
    # The consultant dashboard (team roles) ------------------------------------------------
    path("app/", queue.queue_page, name="app-queue"),
    path("app/queue/live", queue.queue_live, name="app-queue-live"),
    path("app/drafts/<uuid:message_id>/<str:action>/", queue.decide, name="app-draft-decide"),
    path("app/conversations/", team.conversation_list, name="app-conversations"),
    path(
        "app/conversations/<uuid:conversation_id>/",
        team.conversation_detail,
        name="app-conversation",
    ),
    path(
        "app/conversations/<uuid:conversation_id>/live",
        team.conversation_live,
        name="app-conversation-live",
    ),
    path(
        "app/conversations/<uuid:conversation_id>/reply",
        team.conversation_reply,
        name="app-conversation-reply",
    ),
    path("app/playbook/", agents_views.playbook_page, name="app-playbook"),
    path("app/playbook/upload", agents_views.playbook_upload, name="app-playbook-upload"),
    path("app/playbook/<uuid:document_id>/row", agents_views.document_row, name="app-document-row"),
    path(
        "app/playbook/<uuid:document_id>/reingest",
        agents_views.document_reingest,
        name="app-document-reingest",
    ),
    path(
        "app/playbook/<uuid:document_id>/delete",
        agents_views.document_delete,
        name="app-document-delete",
    ),
    path("app/tools/", agents_views.tools_page, name="app-tools"),
    path("app/tools/<slug:section>", agents_views.tools_change, name="app-tools-change"),
    path("app/team/", team_views.team_page, name="app-team"),
    path("app/team/invite", team_views.team_invite, name="app-team-invite"),
    path("app/team/members/<int:user_id>", team_views.team_member, name="app-team-member"),
    path(
        "app/team/invitations/<uuid:invitation_id>/revoke",
        team_views.team_invitation_revoke,
        name="app-team-invitation-revoke",
    ),
    path("app/support/", team_views.support_page, name="app-support"),
    path("app/support/<uuid:session_id>/end", team_views.support_end, name="app-support-end"),
    path("app/settings/", tenant_views.settings_page, name="app-settings"),
    path("brand/logo", tenant_views.logo, name="app-logo"),
    path("invite/<str:token>/", team_views.invitation, name="invitation"),
    # The client chat ------------------------------------------------------------------------
    path("chat/", chat.chat_home, name="chat"),
    path("chat/new", chat.chat_new, name="chat-new"),
    path("chat/<uuid:conversation_id>/", chat.chat_thread, name="chat-thread"),
    path("chat/<uuid:conversation_id>/messages", chat.chat_post, name="chat-post"),
    path("chat/<uuid:conversation_id>/live", chat.chat_live, name="chat-live"),
    path("app/audit/", audit_views.audit_log, name="audit-log"),
    path("app/usage/", billing_views.usage_page, name="usage-page"),
    path("app/credentials/", vault_views.credentials_page, name="credentials"),
    path(
        "app/credentials/<uuid:credential_id>/<str:action>/",
        vault_views.credential_action,
        name="credential-action",
    ),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view loads its init script from a URL: no inline script, so it fits the CSP.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
]

if settings.DEV_IDP:
    # The local OpenID Connect provider: development and tests only (never in production).
    urlpatterns.append(path("idp/", include("devidp.urls")))

# Friendly error pages; API paths keep their JSON bodies (config.views).
handler400 = "config.views.bad_request"
handler403 = "config.views.permission_denied"
handler404 = "config.views.page_not_found"
handler500 = "config.views.server_error"
