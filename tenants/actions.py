"""Changes to the tenant's own settings, made by its owners and admins: review policy, name,
colour and logo. Each records its audit event in the same transaction.

`tenants_tenant` is a platform table (login reads it without a tenant context), so these
functions always change the row of the current tenant context, never one named by the caller.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from django.db import transaction
from django.utils import timezone
from PIL import Image, UnidentifiedImageError

from audit.actions import record_audit_event
from tenants.context import require_tenant_id
from tenants.models import Tenant

LOGO_MAX_BYTES = 2 * 1024 * 1024
LOGO_MAX_PIXELS = 25_000_000  # larger images are refused before they are decoded
LOGO_BOX = (512, 512)
LOGO_FORMATS = {"PNG", "JPEG", "GIF", "WEBP"}


class LogoRejected(ValueError):
    """An image that is not used as a logo; the message says why."""


def _current_tenant_for_update() -> Tenant:
    return Tenant.objects.select_for_update().defer("logo").get(id=require_tenant_id())


def _audit(acting_user: Any, tenant: Tenant, action: str, context: dict[str, Any]) -> None:
    record_audit_event(
        action, actor=acting_user, resource_type="tenant", resource_id=tenant.id, context=context
    )


@transaction.atomic
def set_review_policy(*, acting_user: Any, policy: str) -> None:
    tenant = _current_tenant_for_update()
    if tenant.review_policy == policy:
        return
    previous, tenant.review_policy = tenant.review_policy, policy
    tenant.full_clean(validate_unique=False, exclude=["logo"])
    tenant.save(update_fields=["review_policy", "updated_at"])
    _audit(acting_user, tenant, "tenant.review_policy_changed", {"from": previous, "to": policy})


@transaction.atomic
def set_branding(*, acting_user: Any, name: str, brand_color: str) -> Tenant:
    """Rename the organisation or change its colour. Raises ValidationError."""
    tenant = _current_tenant_for_update()
    changes = {}
    for field, value in (("name", " ".join(name.split())), ("brand_color", brand_color.lower())):
        if getattr(tenant, field) != value:
            changes[field] = {"from": getattr(tenant, field), "to": value}
            setattr(tenant, field, value)
    if not changes:
        return tenant
    tenant.full_clean(validate_unique=False, exclude=["logo", "slug"])
    tenant.save(update_fields=[*changes, "updated_at"])
    _audit(acting_user, tenant, "tenant.branding_changed", changes)
    return tenant


def normalise_logo(data: bytes) -> bytes:
    """The image re-encoded as a PNG of at most 512 by 512 pixels (metadata and anything else that
    rode along in the upload are dropped). Raises LogoRejected."""
    if len(data) > LOGO_MAX_BYTES:
        raise LogoRejected(f"The logo is larger than {LOGO_MAX_BYTES // (1024 * 1024)} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in LOGO_FORMATS:
                    raise LogoRejected("Use a PNG, JPEG, GIF or WebP image.")
                width, height = image.size
                if width * height > LOGO_MAX_PIXELS:
                    raise LogoRejected("The image has too many pixels; use a smaller one.")
                image.seek(0)
                picture = image.convert("RGBA")
    except LogoRejected:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ):
        raise LogoRejected(
            "This file is not an image we can read (PNG, JPEG, GIF or WebP)."
        ) from None
    picture.thumbnail(LOGO_BOX)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


@transaction.atomic
def set_logo(*, acting_user: Any, data: bytes) -> None:
    png = normalise_logo(data)
    tenant = _current_tenant_for_update()
    tenant.logo, tenant.logo_updated_at = png, timezone.now()
    tenant.save(update_fields=["logo", "logo_updated_at", "updated_at"])
    _audit(acting_user, tenant, "tenant.logo_changed", {"bytes": len(png)})


@transaction.atomic
def remove_logo(*, acting_user: Any) -> None:
    tenant = _current_tenant_for_update()
    if tenant.logo_updated_at is None:
        return
    tenant.logo, tenant.logo_updated_at = None, None
    tenant.save(update_fields=["logo", "logo_updated_at", "updated_at"])
    _audit(acting_user, tenant, "tenant.logo_removed", {})
