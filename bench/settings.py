"""Settings of the app that bench/machinery.py serves with gunicorn: the product's settings,
plus the unprotected copy table's model (bench/models.py) and two bench-only endpoints
(bench/urls.py) next to every product URL. Never used outside the benchmark."""

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.apps.BenchConfig"]
ROOT_URLCONF = "bench.urls"
