"""Staff backup codes: single-use codes for the support admin's second step when the
authenticator app is not at hand (django-otp's static device).

A set is ten codes, shown once at /admin/enroll/; generating a set replaces the previous one.
The database keeps only a digest of each code (`otp_static_statictoken.token`), so whoever
can read that table learns nothing to sign in with: the login form (accounts.admin) digests
what was typed before django-otp compares it. Codes are 80 random bits, so an unsalted
SHA-256 cannot be searched. Platform staff have no tenant audit log: generation and use go to
this module's logger.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken

from accounts import support
from accounts.models import User

logger = logging.getLogger(__name__)

CODES_PER_SET = 10
DEVICE_NAME = "Backup codes"
# Fewer left than this and the person is told to generate a new set.
LOW_WATER = 3


def _new_code() -> str:
    raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()  # 16 characters
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def backup_code_digest(code: str) -> str:
    """What the database stores for `code` (16 characters, the width of StaticToken.token).
    Spaces, dashes and case do not matter."""
    typed = "".join(code.split()).replace("-", "").lower()
    digest = hashlib.sha256(f"playbook-backup-code:{typed}".encode()).digest()
    return base64.b32encode(digest).decode().lower()[:16]


def remaining_backup_codes(staff: User) -> int:
    return StaticToken.objects.filter(device__user=staff).count()


@transaction.atomic
def regenerate_backup_codes(*, staff: User) -> list[str]:
    """A new set of codes for `staff`; every earlier code stops working. The codes are
    returned to be shown once: only their digests are kept."""
    if not support.is_support_staff(staff):
        raise ValidationError("Only platform staff have backup codes.")
    # Keep the device (a session verified with a backup code names it), replace its codes.
    device = StaticDevice.objects.filter(user=staff).order_by("id").first()
    if device is None:
        device = StaticDevice.objects.create(user=staff, name=DEVICE_NAME)
    replaced = StaticToken.objects.filter(device__user=staff).delete()[0]
    codes = [_new_code() for _ in range(CODES_PER_SET)]
    StaticToken.objects.bulk_create(
        StaticToken(device=device, token=backup_code_digest(code)) for code in codes
    )
    device.throttle_reset(commit=True)
    transaction.on_commit(
        lambda: logger.info(
            "staff %s (user %s) generated %d backup codes, replacing %d unused ones",
            staff.get_username(),
            staff.pk,
            len(codes),
            replaced,
        )
    )
    return codes


def record_backup_code_used(staff: User) -> int:
    """Log a successful sign-in with a backup code; returns how many codes are left."""
    left = remaining_backup_codes(staff)
    transaction.on_commit(
        lambda: logger.warning(
            "staff %s (user %s) signed in to the support admin with a backup code; %d left",
            staff.get_username(),
            staff.pk,
            left,
        )
    )
    return left


def record_backup_code_refused(staff: User) -> None:
    # Not on commit: the failed login's request may roll back, the attempt still happened.
    logger.warning(
        "staff %s (user %s) entered a backup code that was refused",
        staff.get_username(),
        staff.pk,
    )
