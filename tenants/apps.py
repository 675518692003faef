from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

from tenants.context_keys import install_context_keys


def install_keys_after_migrate(using: str = "owner", **kwargs: Any) -> None:
    """Every `migrate` (run as the owner role) leaves the configured context keys installed."""
    install_context_keys(using)


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants"

    def ready(self) -> None:
        from tenants import checks  # noqa: F401  (registers the system checks)

        post_migrate.connect(install_keys_after_migrate, sender=self)
