"""The benchmark server's app (bench/settings.py). `bench` is a namespace package (no
__init__.py), so its path is given here: Django refuses a namespace app found in two places."""

from pathlib import Path

from django.apps import AppConfig


class BenchConfig(AppConfig):
    name = "bench"
    label = "bench"
    path = str(Path(__file__).resolve().parent)
    default_auto_field = "django.db.models.BigAutoField"
