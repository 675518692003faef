"""Playbook settings: every value from the environment (django-environ, strict parsing).

PLAYBOOK_ENV=development (the default) gives safe local defaults: the embedded PostgreSQL and
Redis that `make dev` starts, DEBUG on, a development-only secret key. PLAYBOOK_ENV=production
requires SECRET_KEY, DATABASE_URL, DATABASE_OWNER_URL and REDIS_URL and turns on the secure
cookie and HTTPS settings. A bad value stops startup with a message naming the variable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from config.env import StrictEnv
from tenants.outbound import parse_allowed_destinations

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PLAYBOOK_DATA_DIR", BASE_DIR / ".data")).resolve()

env = StrictEnv()
# Written by `config/devstack.py` (make dev / make test); real environment variables win.
if (DATA_DIR / "stack.env").exists():
    StrictEnv.read_env(str(DATA_DIR / "stack.env"))

PLAYBOOK_ENV = env.choice("PLAYBOOK_ENV", ("development", "production"), default="development")
PRODUCTION = PLAYBOOK_ENV == "production"

DEBUG = env.bool("DEBUG", default=not PRODUCTION)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when PLAYBOOK_ENV=production.")

_DEV_SECRET_KEY = "django-insecure-development-only-key-never-use-in-production"  # noqa: S105
SECRET_KEY = env.str("SECRET_KEY", default="" if PRODUCTION else _DEV_SECRET_KEY)
if not SECRET_KEY:
    raise ImproperlyConfigured("Set the environment variable SECRET_KEY (PLAYBOOK_ENV=production).")


def _context_keys(raw: str) -> list[tuple[str, bytes]]:
    """TENANT_CONTEXT_KEYS: `kid:hex,kid:hex`, the first signs new tenant contexts, every one
    is installed in the database (owner-only table) by `manage.py install_context_keys`.
    Unset: one key derived from SECRET_KEY."""
    if not raw:
        derived = hmac.new(SECRET_KEY.encode(), b"playbook.tenant-context", "sha256").digest()
        return [("s" + hashlib.sha256(b"kid:" + derived).hexdigest()[:8], derived)]
    keys = []
    for item in raw.split(","):
        kid, _, secret = item.strip().partition(":")
        try:
            value = bytes.fromhex(secret)
        except ValueError:
            value = b""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", kid) or len(value) < 32:
            raise ImproperlyConfigured(
                "TENANT_CONTEXT_KEYS must be `kid:hexsecret[,kid:hexsecret...]` with key ids of "
                "letters, digits, _ or - and secrets of at least 32 bytes "
                "(python -c 'import secrets; print(secrets.token_hex(32))')."
            )
        keys.append((kid, value))
    return keys


# Signing keys of the tenant context (tenants/context.py) and how long a signed context may
# wait before the database refuses to enter it (it is bound to one transaction once entered).
TENANT_CONTEXT_KEYS = _context_keys(env.str("TENANT_CONTEXT_KEYS", default=""))
TENANT_CONTEXT_TTL_SECONDS = env.int("TENANT_CONTEXT_TTL_SECONDS", default=60)


ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# The local OpenID Connect provider (django-oauth-toolkit) for development and tests only.
DEV_IDP = env.bool("DEV_IDP", default=False)
if PRODUCTION and DEV_IDP:
    raise ImproperlyConfigured("DEV_IDP must be off when PLAYBOOK_ENV=production.")
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "tenants",
    "accounts",
    "conversations",
    "agents",
    "billing",
    "audit",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI from our own static files (CSP: no CDN)
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",  # staff backup codes (accounts/backup_codes.py)
    "mozilla_django_oidc",
    "django_htmx",
]
if DEV_IDP:
    INSTALLED_APPS += ["oauth2_provider", "devidp"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "audit.middleware.RequestInfoMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Staff at the support admin: a verified platform context before django-otp reads
    # their second factor (platform rows).
    "accounts.middleware.StaffPlatformMiddleware",
    "django_otp.middleware.OTPMiddleware",
    # Bearer credentials (JWT, API key) are verified before the tenant is entered, so the
    # whole view runs inside the principal's tenant.
    "accounts.middleware.BearerAuthenticationMiddleware",
    *(["devidp.middleware.DevIdPSessionMiddleware"] if DEV_IDP else []),
    "tenants.middleware.TenantContextMiddleware",
    # NUL, broken encodings, oversized or too-deep JSON: a 400 before any view reads them.
    "tenants.middleware.InputGuardMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.branding.layout",
            ],
            "builtins": ["tenants.templatetags.playbook_ui"],
        },
    },
]

# --------------------------------------------------------------------------- database
# Two roles (DESIGN.md invariant 3): the app connects as DATABASE_URL's role, which is
# NOSUPERUSER, NOBYPASSRLS and owns nothing; `manage.py migrate` runs as DATABASE_OWNER_URL's.


def _embedded_url(role: str, password_var: str) -> str:
    password = quote(os.environ.get(password_var, ""), safe="")
    return f"postgres://{role}:{password}@/playbook?host={quote(str(DATA_DIR / 'pg'), safe='/')}"


_db_default = (
    {} if PRODUCTION else {"default": _embedded_url("playbook_app", "PLAYBOOK_APP_PASSWORD")}
)
_owner_default = (
    {} if PRODUCTION else {"default": _embedded_url("playbook_owner", "PLAYBOOK_OWNER_PASSWORD")}
)

DATABASES = {
    "default": {
        **env.db_url("DATABASE_URL", **_db_default),
        "ATOMIC_REQUESTS": True,
        "CONN_MAX_AGE": env.int("DATABASE_CONN_MAX_AGE", default=60),
        "CONN_HEALTH_CHECKS": True,
    },
    "owner": {
        **env.db_url("DATABASE_OWNER_URL", **_owner_default),
        "ATOMIC_REQUESTS": False,
        "CONN_MAX_AGE": 0,
    },
}
if env.bool("DATABASE_POOL", default=False):
    # psycopg's pool inside each process; incompatible with persistent connections.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN", default=2),
        "max_size": env.int("DATABASE_POOL_MAX", default=10),
    }
if DATABASES["default"].get("USER") == DATABASES["owner"].get("USER"):
    raise ImproperlyConfigured(
        "DATABASE_URL and DATABASE_OWNER_URL use the same role. The app must connect as a "
        "runtime role that owns nothing (see README, 'Database roles')."
    )
DATABASE_ROUTERS = ["tenants.routers.OwnerMigratesRouter"]
# Only used by `provision_database` and the test suite to create databases and roles.
DATABASE_ADMIN_URL = env.str("DATABASE_ADMIN_URL", default="")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --------------------------------------------------------------------------- Redis, Celery

REDIS_URL = env.str("REDIS_URL", default="" if PRODUCTION else "redis://127.0.0.1:6390/0")
if not REDIS_URL:
    raise ImproperlyConfigured("Set the environment variable REDIS_URL (PLAYBOOK_ENV=production).")

# The limiter's Redis (rate limits, spend reservations): the same server by default.
LIMITER_REDIS_URL = env.str("LIMITER_REDIS_URL", default=REDIS_URL)
LIMITER_MAX_CONNECTIONS = env.int("LIMITER_MAX_CONNECTIONS", default=50)

# Sessions live in Redis, never in the database (README, "Sessions"): whoever can run SQL as
# the app's role finds no session to replay. Their own alias and key prefix, so they never
# mix with cache keys; SESSION_REDIS_URL puts them on another database number or server.
SESSION_REDIS_URL = env.str("SESSION_REDIS_URL", default=REDIS_URL)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "playbook",
        "TIMEOUT": 300,
    },
    "sessions": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": SESSION_REDIS_URL,
        "KEY_PREFIX": "playbook-session",
    },
}
SESSION_ENGINE = "accounts.sessions"
SESSION_CACHE_ALIAS = "sessions"

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="playbook")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task whose worker dies is redelivered, not lost.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# With the Redis broker, a task delivered to a worker that died without acknowledging it goes
# back to the queue this many seconds after its delivery. Keep it longer than the longest task
# and the longest retry countdown (AGENT_RUN_RETRY_BACKOFF_MAX_SECONDS): a task still running,
# or waiting for its countdown, past it is delivered a second time (agent runs then do nothing).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT_SECONDS", default=3600)
}

# --------------------------------------------------------------------------- auth, API

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "accounts.backends.TenantOIDCBackend",  # people: OpenID Connect, tenant from the claim
    # Platform staff: password + TOTP (admin); accounts read through signed lookups.
    "accounts.backends.AccountLookupBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
LOGIN_REDIRECT_URL_FAILURE = "login"

# --------------------------------------------------------------------------- OpenID Connect
# Any provider by discovery: set OIDC_ISSUER (its /.well-known/openid-configuration is
# read once and cached); OIDC_OP_* override single endpoints.
OIDC_ISSUER = env.str("OIDC_ISSUER", default=f"{SITE_URL}/idp" if DEV_IDP else "").rstrip("/")
OIDC_RP_CLIENT_ID = env.str("OIDC_RP_CLIENT_ID", default="playbook-web")
OIDC_RP_CLIENT_SECRET = env.str("OIDC_RP_CLIENT_SECRET", default="" if PRODUCTION else "dev-only")
OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env.str("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env.str("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env.str("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_OP_LOGOUT_ENDPOINT = env.str("OIDC_OP_LOGOUT_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_RP_SCOPES = env.str("OIDC_RP_SCOPES", default="openid email profile")
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
OIDC_STORE_ID_TOKEN = True  # for the provider's logout (id_token_hint)
OIDC_OP_LOGOUT_URL_METHOD = "accounts.oidc.provider_logout_url"
OIDC_CALLBACK_CLASS = "accounts.views.TenantOIDCCallbackView"
OIDC_TIMEOUT = env.int("OIDC_TIMEOUT_SECONDS", default=5)
# The signed claim that names the user's tenant: tenant_id (default), custom:tenant_id
# (Cognito), org_id (Auth0 organizations). Its value is the tenant's UUID or slug.
OIDC_TENANT_CLAIM = env.str("OIDC_TENANT_CLAIM", default="tenant_id")
OIDC_ROLES_CLAIM = env.str("OIDC_ROLES_CLAIM", default="roles")
# Bearer JWTs for the API: audience, algorithms, clock leeway, JWKS caching.
OIDC_API_AUDIENCE = env.list("OIDC_API_AUDIENCE", default=["playbook-api"])
OIDC_ALLOWED_ALGORITHMS = env.list("OIDC_ALLOWED_ALGORITHMS", default=["RS256", "ES256"])
OIDC_LEEWAY_SECONDS = env.int("OIDC_LEEWAY_SECONDS", default=30)
OIDC_JWKS_TTL_SECONDS = env.int("OIDC_JWKS_TTL_SECONDS", default=3600)
OIDC_JWKS_COOLDOWN_SECONDS = env.int("OIDC_JWKS_COOLDOWN_SECONDS", default=30)
if not set(OIDC_ALLOWED_ALGORITHMS) <= {"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"}:
    raise ImproperlyConfigured(
        "OIDC_ALLOWED_ALGORITHMS may name only asymmetric algorithms (RS256, ES256, ...)."
    )

if DEV_IDP:
    _idp_key_file = env.str("DEV_IDP_RSA_KEY_FILE", default=str(DATA_DIR / "dev_idp_rsa.pem"))
    OAUTH2_PROVIDER = {
        "OIDC_ENABLED": True,
        "OIDC_ISS_ENDPOINT": OIDC_ISSUER,
        "OIDC_RSA_PRIVATE_KEY": Path(_idp_key_file).read_text()
        if Path(_idp_key_file).exists()
        else "",
        "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
        "OIDC_RP_INITIATED_LOGOUT_ALWAYS_PROMPT": False,
        "PKCE_REQUIRED": True,
        "SCOPES": {
            "openid": "OpenID Connect",
            "email": "Email address",
            "profile": "Name",
        },
        "DEFAULT_SCOPES": ["openid"],
        "OAUTH2_VALIDATOR_CLASS": "devidp.validators.DevIdPValidator",
        "ACCESS_TOKEN_GENERATOR": "devidp.tokens.signed_access_token",
        "REFRESH_TOKEN_GENERATOR": "oauthlib.oauth2.rfc6749.tokens.random_token_generator",
        "ACCESS_TOKEN_EXPIRE_SECONDS": 3600,
    }

# --------------------------------------------------------------------------- audit log

# Ed25519 private key (PEM) that signs audit exports and chain checkpoints; `make dev`
# generates one in .data/. Production: a key from your secret store, mounted as a file.
AUDIT_SIGNING_KEY_FILE = env.str("AUDIT_SIGNING_KEY_FILE", default="")
AUDIT_CHECKPOINT_MINUTES = env.int("AUDIT_CHECKPOINT_MINUTES", default=15)
CELERY_BEAT_SCHEDULE = {
    "audit-checkpoints": {
        "task": "audit.checkpoint_all_tenants",
        "schedule": AUDIT_CHECKPOINT_MINUTES * 60.0,
    },
}

# --------------------------------------------------------------------------- Stripe metering
# Usage is billed through Stripe billing meters (billing/stripe_sync.py). No secret key: metering
# is disabled (meter events wait in the outbox, nothing is sent, and the task and the
# `stripe_sync` command say so). STRIPE_API_BASE points the SDK elsewhere (tests: a local stand-in).
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com").rstrip("/")
STRIPE_METER_EVENT_NAME = env.str("STRIPE_METER_EVENT_NAME", default="playbook_usage")
STRIPE_METER_BATCH = env.int("STRIPE_METER_BATCH", default=100)  # meter events per tenant per run
STRIPE_TIMEOUT_SECONDS = env.int("STRIPE_TIMEOUT_SECONDS", default=20)
CELERY_BEAT_SCHEDULE["billing-meter-events"] = {
    "task": "billing.send_all_meter_events",
    "schedule": 60.0,
}

# --------------------------------------------------------------------------- agents

# Default embedder for playbook chunks: "hashing" (no dependencies), "minilm" (the
# all-MiniLM-L6-v2 extra), or "openai:<model>" (a tenant's OpenAI-compatible key). A tenant's
# data_source entitlement may name another; changing it re-embeds that tenant's chunks.
PLAYBOOK_EMBEDDER = env.str("PLAYBOOK_EMBEDDER", default="hashing")
PLAYBOOK_MAX_UPLOAD_BYTES = env.int("PLAYBOOK_MAX_UPLOAD_BYTES", default=10 * 1024 * 1024)
# pgvector HNSW search under RLS: candidates scanned per query, iterative scan for filters.
# 800 keeps recall@10 at about 0.98 for a tenant with 80,000 of 200,000 chunks (bench/vectors.py:
# 0.79 at 100, 0.95 at 400), at about 30 ms a search on two cores.
PLAYBOOK_HNSW_EF_SEARCH = env.int("PLAYBOOK_HNSW_EF_SEARCH", default=800)
# A tenant with at most this many searchable chunks is searched exactly (every chunk compared)
# instead of through the shared HNSW index: faster for a small tenant, and exact.
PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS = env.int("PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS", default=5_000)
# How long a resolved entitlement set is cached in Redis (invalidated on change).
REGISTRY_CACHE_SECONDS = env.int("REGISTRY_CACHE_SECONDS", default=60)
# Calls on a tenant's behalf (models, embeddings, the http_request tool: tenants.outbound) reach
# public addresses only; these private destinations too (a self-hosted model server): CIDRs,
# addresses or host names, each with an optional :port. The operator's choice, never a tenant's.
OUTBOUND_ALLOWED_NETWORKS = env.list("OUTBOUND_ALLOWED_NETWORKS", default=[])
parse_allowed_destinations(OUTBOUND_ALLOWED_NETWORKS)  # a bad entry stops startup, named
if "AGENT_HTTP_ALLOW_PRIVATE" in os.environ:
    raise ImproperlyConfigured(
        "AGENT_HTTP_ALLOW_PRIVATE is gone: list the private networks Playbook may call in "
        "OUTBOUND_ALLOWED_NETWORKS (e.g. 10.0.0.0/8 or ollama:11434), then unset it."
    )
AGENT_MAX_TOOL_ROUNDS = env.int("AGENT_MAX_TOOL_ROUNDS", default=4)
# A run the limiter cannot admit yet (rate limited, or its Redis unreachable) or whose database
# went away waits `queued` and is tried again: after 5, 10, 20... seconds (at most 120, with
# jitter), AGENT_RUN_MAX_ATTEMPTS attempts in all (about ten minutes), then it fails.
AGENT_RUN_MAX_ATTEMPTS = env.int("AGENT_RUN_MAX_ATTEMPTS", default=10)
AGENT_RUN_RETRY_BACKOFF_SECONDS = env.float("AGENT_RUN_RETRY_BACKOFF_SECONDS", default=5.0)
AGENT_RUN_RETRY_BACKOFF_MAX_SECONDS = env.float(
    "AGENT_RUN_RETRY_BACKOFF_MAX_SECONDS", default=120.0
)
# A run still `queued` with no attempt for this long lost its task (the broker's Redis came
# back without its data, or the next attempt could not be queued): the beat queues it again.
AGENT_RUN_STALLED_SECONDS = env.int("AGENT_RUN_STALLED_SECONDS", default=300)
CELERY_BEAT_SCHEDULE["agents-requeue-stalled-runs"] = {
    "task": "agents.requeue_all_stalled_runs",
    "schedule": 120.0,
}
DATA_UPLOAD_MAX_MEMORY_SIZE = PLAYBOOK_MAX_UPLOAD_BYTES + 1024 * 1024
# What a JSON body may be (tenants/inputs.py): larger is a 413, deeper a 400 `too_deep`.
INPUT_MAX_JSON_BYTES = env.int("INPUT_MAX_JSON_BYTES", default=1024 * 1024)
INPUT_MAX_JSON_DEPTH = env.int("INPUT_MAX_JSON_DEPTH", default=32)

# --------------------------------------------------------------------------- credential vault
# Tenant credentials are encrypted with a per-tenant data key, itself wrapped by a KEK from:
#   local          VAULT_LOCAL_KEYS='{"1": "<base64 32 bytes>"}' or VAULT_LOCAL_KEY_FILE
#   aws_kms        VAULT_AWS_KMS_KEY_ID, VAULT_AWS_REGION (credentials from the AWS chain)
#   vault_transit  VAULT_ADDR, VAULT_TOKEN, VAULT_TRANSIT_KEY (a derived transit key)
VAULT_BACKEND = env.choice("VAULT_BACKEND", ("local", "aws_kms", "vault_transit"), default="local")
VAULT_LOCAL_KEYS = env.str("VAULT_LOCAL_KEYS", default="")
VAULT_LOCAL_KEY_FILE = env.str("VAULT_LOCAL_KEY_FILE", default="")
VAULT_AWS_KMS_KEY_ID = env.str("VAULT_AWS_KMS_KEY_ID", default="")
VAULT_AWS_REGION = env.str("VAULT_AWS_REGION", default="eu-west-1")
VAULT_AWS_ENDPOINT_URL = env.str("VAULT_AWS_ENDPOINT_URL", default="")
VAULT_ADDR = env.str("VAULT_ADDR", default="")
VAULT_TOKEN = env.str("VAULT_TOKEN", default="")
VAULT_TRANSIT_KEY = env.str("VAULT_TRANSIT_KEY", default="playbook")
VAULT_TRANSIT_MOUNT = env.str("VAULT_TRANSIT_MOUNT", default="transit")
# Every call to AWS KMS or Vault is bounded: connecting, then waiting for the answer, and
# (AWS KMS) at most VAULT_MAX_ATTEMPTS attempts. An unreachable or slow store fails the one
# call that needed a credential (tenants.vault.backends.CredentialStoreUnavailable).
VAULT_CONNECT_TIMEOUT_SECONDS = env.float("VAULT_CONNECT_TIMEOUT_SECONDS", default=3.0)
VAULT_READ_TIMEOUT_SECONDS = env.float("VAULT_READ_TIMEOUT_SECONDS", default=5.0)
VAULT_MAX_ATTEMPTS = env.int("VAULT_MAX_ATTEMPTS", default=2)
if not (0 < VAULT_CONNECT_TIMEOUT_SECONDS <= 60 and 0 < VAULT_READ_TIMEOUT_SECONDS <= 60):
    raise ImproperlyConfigured(
        "VAULT_CONNECT_TIMEOUT_SECONDS and VAULT_READ_TIMEOUT_SECONDS must be more than 0 and "
        "at most 60."
    )
if not 1 <= VAULT_MAX_ATTEMPTS <= 5:
    raise ImproperlyConfigured("VAULT_MAX_ATTEMPTS must be 1 to 5.")

# --------------------------------------------------------------------------- support admin

TENANT_CONTEXT_RESOLVER = "accounts.support.resolve_request_context"
OTP_TOTP_ISSUER = "Playbook"
SUPPORT_SESSION_DEFAULT_MINUTES = env.int("SUPPORT_SESSION_DEFAULT_MINUTES", default=60)
SUPPORT_SESSION_MAX_MINUTES = env.int("SUPPORT_SESSION_MAX_MINUTES", default=240)
# How long an invitation link to join a tenant stays valid.
INVITATION_DAYS = env.int("INVITATION_DAYS", default=14)

# Invitation emails. EMAIL_URL as django-environ reads it: smtp+tls://user:password@host:587,
# or consolemail:// (the development default: printed by the web process). Unset in
# production: no email is sent and the dashboard shows the link to pass on instead.
EMAIL_URL = env.str("EMAIL_URL", default="" if PRODUCTION else "consolemail://")
SEND_EMAIL = bool(EMAIL_URL)
_email = env.email_url("EMAIL_URL", default=EMAIL_URL or "dummymail://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email.get("EMAIL_HOST") or "localhost"
EMAIL_PORT = int(_email.get("EMAIL_PORT") or 25)
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL = bool(_email.get("EMAIL_USE_SSL"))
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Playbook <no-reply@localhost>")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First, so that a request without credentials gets 401 + WWW-Authenticate: Bearer.
        "accounts.authentication.BearerAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # The body InputGuardMiddleware parsed and checked (tenants/inputs.py), then forms.
    "DEFAULT_PARSER_CLASSES": [
        "tenants.inputs.GuardedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api_errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Playbook API",
    "DESCRIPTION": "Multi-tenant AI agents. The tenant always comes from your credential.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI is served from drf-spectacular-sidecar's static files, not a CDN (CSP).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # A message's status appears in two components (Message, PostedMessage): name it once.
    "ENUM_NAME_OVERRIDES": {"MessageStatusEnum": "conversations.models.Message.Status"},
}

# --------------------------------------------------------------------------- i18n, static

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Outside production WhiteNoise serves straight from the source folders, so the app runs
# with DEBUG off (friendly error pages, as the browser tests need) without collectstatic.
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --------------------------------------------------------------------------- security

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # Load balancers probe these over plain HTTP; they must not get a redirect.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    if not CSRF_TRUSTED_ORIGINS:
        CSRF_TRUSTED_ORIGINS = [
            f"https://*{host}" if host.startswith(".") else f"https://{host}"
            for host in ALLOWED_HOSTS
            if host not in ("*", "")
        ]

# Content-Security-Policy (config/csp.py). Same-origin scripts only; inline `style=`
# attributes are used by the pages and the admin. Login and logout end in a redirect to the
# OpenID provider, which form-action must allow (CSP_FORM_ACTION adds more origins).
_form_action = ["'self'"]
for _url in (OIDC_ISSUER, OIDC_OP_AUTHORIZATION_ENDPOINT, OIDC_OP_LOGOUT_ENDPOINT):
    _parts = urlsplit(_url)
    if _parts.scheme and _parts.netloc:
        _form_action.append(f"{_parts.scheme}://{_parts.netloc}")
_form_action = list(dict.fromkeys([*_form_action, *env.list("CSP_FORM_ACTION", default=[])]))
CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "frame-ancestors": ["'none'"],
    "form-action": _form_action,
}

# One line per event. LOG_FORMAT=json (the production default) writes JSON objects with
# tenant_id, user_id, request_id and agent_run_id (config/telemetry.py); secrets are masked
# first (config/scrubbing.py).
LOG_FORMAT = env.choice("LOG_FORMAT", ("json", "plain"), default="json" if PRODUCTION else "plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "secrets": {"()": "config.scrubbing.SecretsFilter"},
        "context": {"()": "config.telemetry.ContextFilter"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "config.telemetry.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["secrets", "context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # httpx2 logs every request's full URL at INFO: a tenant's URL may carry a token.
        "httpx2": {"level": "WARNING"},
    },
}

# --------------------------------------------------------------------------- error reports

SENTRY_DSN = env.str("SENTRY_DSN", default="")
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    from config.scrubbing import before_send

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=PLAYBOOK_ENV,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        send_default_pii=False,
        include_local_variables=False,  # frames can hold decrypted secrets
        before_send=before_send,  # type: ignore[arg-type]
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
    )

# --------------------------------------------------------------------------- telemetry
# OpenTelemetry traces (config/telemetry.py): OTEL_EXPORTER=otlp (OTLP over HTTP to
# OTEL_EXPORTER_OTLP_ENDPOINT, read by the exporter) or console; "none" turns tracing off.
OTEL_EXPORTER = env.choice("OTEL_EXPORTER", ("none", "otlp", "console"), default="none")
OTEL_SERVICE_NAME = env.str("OTEL_SERVICE_NAME", default="playbook")
# After authentication and the tenant: names the user and request on logs, spans, Sentry.
MIDDLEWARE.insert(
    MIDDLEWARE.index("tenants.middleware.TenantContextMiddleware") + 1,
    "config.telemetry.TelemetryMiddleware",
)

# --------------------------------------------------------------------------- guards
# Brute-force protection of the support admin's login and request rates (README, "Login
# lockouts and request rates"). Both count in Redis through the `guards` cache alias: no
# table, so nothing in the database for the runtime role to read or write.
GUARDS_REDIS_URL = env.str("GUARDS_REDIS_URL", default=REDIS_URL)
CACHES["guards"] = {
    "BACKEND": "django.core.cache.backends.redis.RedisCache",
    "LOCATION": GUARDS_REDIS_URL,
    "KEY_PREFIX": "playbook-guards",
    # A Redis that hangs must not hang every login and API request with it.
    "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
}
GUARDS_CACHE = "guards"
# Behind proxies (load balancer, CDN) set how many append to X-Forwarded-For: the client is
# the address the outermost one saw (config/client_ip.py). 0: REMOTE_ADDR, the header ignored.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT must be 0 or more (proxies in front).")

# django-axes at the support admin only (/admin/: the password step, and the second factor,
# accounts/admin.py), keyed on username + client IP, counted by accounts.lockouts.
INSTALLED_APPS += ["axes"]
MIGRATION_MODULES = {"axes": None}  # the cache handler needs none of axes' tables
AUTHENTICATION_BACKENDS.insert(0, "axes.backends.AxesStandaloneBackend")
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "axes.middleware.AxesMiddleware",  # turns a lockout into accounts.lockouts' page
)
AXES_HANDLER = "accounts.lockouts.AdminLoginLockoutHandler"
AXES_CACHE = GUARDS_CACHE
AXES_ONLY_ADMIN_SITE = True
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(seconds=env.int("ADMIN_LOGIN_LOCKOUT_SECONDS", default=900))
# A lockout lasts the cool-off from the failure that caused it; attempts during it (the
# right password included) are refused and do not extend it, so the page can say when.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.lockouts.lockout_response"
AXES_CLIENT_IP_CALLABLE = "config.client_ip.client_ip"
AXES_ENABLE_ADMIN = False  # lockouts are listed at /admin/lockouts/ (no axes tables)
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_TIME.total_seconds() < 1:
    raise ImproperlyConfigured(
        "ADMIN_LOGIN_FAILURE_LIMIT and ADMIN_LOGIN_LOCKOUT_SECONDS must be at least 1."
    )

# Request rates per credential (API) and per client IP (anonymous pages and API requests
# without a credential), config/throttling.py. Fail open when Redis cannot be reached.
THROTTLE_RATES = {
    "api_credential": env.rate("THROTTLE_API_CREDENTIAL_RATE", default="1200/min"),
    "api_anonymous": env.rate("THROTTLE_API_ANONYMOUS_RATE", default="60/min"),
    "login": env.rate("THROTTLE_LOGIN_RATE", default="60/min"),
    "invite": env.rate("THROTTLE_INVITE_RATE", default="30/min"),
    "dev_idp": env.rate("THROTTLE_DEV_IDP_RATE", default="300/min"),
}
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = ["config.throttling.CredentialRateThrottle"]
MIDDLEWARE.insert(
    MIDDLEWARE.index("accounts.middleware.BearerAuthenticationMiddleware") + 1,
    "config.throttling_middleware.AnonymousRateMiddleware",
)
