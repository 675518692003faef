from django.apps import AppConfig


class DevIdPConfig(AppConfig):
    name = "devidp"
    verbose_name = "Local identity provider (development)"
