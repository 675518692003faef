"""Cross-tenant leak detection for response bodies: whose ids are these?

`tenant_rows(tenant_id)` lists, from the database and under the tenant's own context, the ids
of everything the tenant owns: the primary key of every tenant table with a UUID key, its
users' ids, its audit event ids, and its slug. `IdLedger` remembers which tenant owns each
id; `IdLedger.foreign(tenant, body, sent)` names every id in a response body that belongs
to another tenant (ids the request itself carried are not counted: echoing what the caller
sent is not a leak). UUIDs are found anywhere in the text, with or without hyphens (API keys
embed their tenant's id as hex); integer user and audit-event ids only where the JSON names
them (`client`, `author`, `actor_id`, an audit event's `id`...), since small integers are
everywhere else.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

UUID_RE = re.compile(
    r"(?<![0-9a-fA-F])"
    r"([0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})"
    r"(?![0-9a-fA-F])"
)
# JSON keys whose integer (or digit-string) value is a user id.
USER_KEYS = frozenset(
    {"client", "author", "requested_by", "created_by", "reviewed_by", "user", "user_id", "actor_id"}
)


def uuids_in(text: str) -> set[str]:
    found = set()
    for match in UUID_RE.finditer(text):
        try:
            found.add(str(uuid.UUID(match.group(1))))
        except ValueError:
            continue
    return found


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def _walk(node: Any) -> Iterator[tuple[str, int]]:
    """(kind, id) for every user reference and audit event id in a JSON document."""
    if isinstance(node, dict):
        is_audit_event = "seq" in node and "hash" in node and "prev_hash" in node
        for key, value in node.items():
            number = _int(value)
            if number is not None and key in USER_KEYS:
                yield "user", number
            elif number is not None and key == "id" and is_audit_event:
                yield "audit", number
            else:
                yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


@dataclass
class TenantRows:
    tenant_id: str
    slug: str
    uuids: set[str] = field(default_factory=set)
    users: set[int] = field(default_factory=set)
    audit_events: set[int] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "slug": self.slug,
            "uuids": sorted(self.uuids),
            "users": sorted(self.users),
            "audit_events": sorted(self.audit_events),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TenantRows:
        return cls(
            tenant_id=data["tenant_id"],
            slug=data["slug"],
            uuids=set(data["uuids"]),
            users=set(data["users"]),
            audit_events=set(data["audit_events"]),
        )


def tenant_rows(tenant_id: uuid.UUID | str) -> TenantRows:
    """Everything the tenant owns, read under its own context (as the runtime role)."""
    from django.apps import apps
    from django.db import models

    from accounts.models import User
    from audit.actions import audit_operator
    from audit.models import AuditEvent
    from tenants.context import tenant_context
    from tenants.models import Tenant, TenantScopedModel

    tenant = Tenant.objects.get(id=tenant_id)
    rows = TenantRows(tenant_id=str(tenant.id), slug=tenant.slug, uuids={str(tenant.id)})
    with tenant_context(tenant.id), audit_operator():
        rows.users = set(User.objects.filter(tenant_id=tenant.id).values_list("id", flat=True))
        for model in apps.get_models():
            if not issubclass(model, TenantScopedModel) or model._meta.abstract:
                continue
            if isinstance(model._meta.pk, models.UUIDField):
                ids = model.objects.all().values_list("pk", flat=True)
                rows.uuids.update(str(pk) for pk in ids)
        rows.audit_events = set(AuditEvent.objects.all().values_list("id", flat=True))
    return rows


@dataclass
class Leak:
    tenant: str  # whose request it was
    owner: str  # whose id came back
    kind: str  # "uuid", "user", "audit", "slug"
    value: str

    def __str__(self) -> str:
        return f"{self.kind} {self.value} of tenant {self.owner} in a response to {self.tenant}"


class IdLedger:
    """Who owns which id. Thread-safe; `learn=True` lets unknown UUIDs seen in a tenant's
    responses count as that tenant's (for data created while the suite runs)."""

    def __init__(self, tenants: Iterable[TenantRows]) -> None:
        self._lock = threading.Lock()
        self.uuids: dict[str, str] = {}
        self.users: dict[int, str] = {}
        self.audit_events: dict[int, str] = {}
        self.slugs: dict[str, str] = {}
        self.seen: dict[str, set[str]] = {}
        for rows in tenants:
            self.add(rows)

    def add(self, rows: TenantRows) -> None:
        with self._lock:
            key = rows.tenant_id
            self.seen.setdefault(key, set())
            self.slugs[rows.slug.lower()] = key
            for value in rows.uuids:
                self.uuids[value] = key
            for number in rows.users:
                self.users[number] = key
            for number in rows.audit_events:
                self.audit_events[number] = key
        self._slug_re = re.compile(
            "|".join(re.escape(s) for s in sorted(self.slugs, key=len, reverse=True)),
            re.IGNORECASE,
        )

    def foreign(
        self, tenant: str, body: str | bytes, sent: str = "", *, learn: bool = False
    ) -> list[Leak]:
        """Every id in `body` (a response to `tenant`'s request) that another tenant owns."""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        sent_uuids = uuids_in(sent)
        leaks: list[Leak] = []
        found = uuids_in(text) - sent_uuids
        with self._lock:
            seen = self.seen.setdefault(tenant, set())
            for value in found:
                owner = self.uuids.get(value)
                if owner is None:
                    if learn:
                        self.uuids[value] = tenant
                elif owner != tenant:
                    leaks.append(Leak(tenant, owner, "uuid", value))
            seen.update(found)
        for match in {m.lower() for m in self._slug_re.findall(text)}:
            owner = self.slugs[match]
            if owner != tenant and match not in sent.lower():
                leaks.append(Leak(tenant, owner, "slug", match))
        try:
            document = json.loads(text) if text[:1] in ("{", "[") else None
        except ValueError:
            document = None
        if document is not None:
            for kind, number in _walk(document):
                table = self.users if kind == "user" else self.audit_events
                owner = table.get(number)
                if owner is not None and owner != tenant and str(number) not in sent:
                    leaks.append(Leak(tenant, owner, kind, str(number)))
        return leaks

    def cross_check(self, database: Iterable[TenantRows]) -> list[Leak]:
        """After a run: every UUID seen in a tenant's responses against what the database
        says each tenant owns (including rows created while the run went on)."""
        owner_of = {value: rows.tenant_id for rows in database for value in rows.uuids}
        leaks = []
        with self._lock:
            for tenant, seen in self.seen.items():
                for value in seen:
                    owner = owner_of.get(value)
                    if owner is not None and owner != tenant:
                        leaks.append(Leak(tenant, owner, "uuid", value))
        return leaks
