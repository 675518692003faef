"""URLs of the local provider, mounted at /idp/ only when DEV_IDP=1 (namespace as DOT's)."""

from django.urls import path
from oauth2_provider import views as oauth2_views

from devidp import views

app_name = "oauth2_provider"

urlpatterns = [
    path("", views.home, name="idp-home"),
    path("login/", views.sign_in, name="idp-login"),
    path("signup/", views.sign_up, name="idp-signup"),
    path("authorize/", views.DevAuthorizationView.as_view(), name="authorize"),
    path("token/", oauth2_views.TokenView.as_view(), name="token"),
    path("revoke_token/", oauth2_views.RevokeTokenView.as_view(), name="revoke-token"),
    path(
        ".well-known/openid-configuration",
        oauth2_views.ConnectDiscoveryInfoView.as_view(),
        name="oidc-connect-discovery-info",
    ),
    path(".well-known/jwks.json", oauth2_views.JwksInfoView.as_view(), name="jwks-info"),
    path("userinfo/", oauth2_views.UserInfoView.as_view(), name="user-info"),
    path("logout/", views.DevLogoutView.as_view(), name="rp-initiated-logout"),
]
