import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.telemetry import setup_tracing

# Before the handler loads its middleware: Django's instrumentation adds one.
setup_tracing()
application = get_wsgi_application()

from tenants.checks import assert_tenant_boundary  # noqa: E402

# Raised in a gunicorn worker, the refusal fails its boot: the arbiter logs it and exits
# with status 3 ("Worker failed to boot"), so no --preload or hook is needed.
assert_tenant_boundary()
