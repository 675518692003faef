"""Template filters of the server-rendered pages (`{% load playbook_ui %}`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter
def ago(value: datetime | None) -> str:
    """ "just now", "5 minutes ago", "2 days ago"."""
    if not value:
        return ""
    if timezone.now() - value < timedelta(minutes=1):
        return "just now"
    return f"{timesince(value, depth=1)} ago"


@register.filter
def sources(citations: Any) -> list[dict[str, Any]]:
    """Citations grouped by document, in order: [{"title", "numbers", "quotes"}]."""
    grouped: dict[str, dict[str, Any]] = {}
    for index, citation in enumerate(citations or [], start=1):
        if not isinstance(citation, dict):
            continue
        title = str(citation.get("title") or "Playbook")
        entry = grouped.setdefault(
            str(citation.get("document") or title), {"title": title, "numbers": [], "quotes": []}
        )
        entry["numbers"].append(citation.get("n") or index)
        if citation.get("quote"):
            entry["quotes"].append(str(citation["quote"]))
    return list(grouped.values())


@register.filter
def waited(value: datetime | None) -> str:
    """How long since `value`: "under a minute", "5 minutes", "2 days"."""
    if not value:
        return ""
    if timezone.now() - value < timedelta(minutes=1):
        return "under a minute"
    return timesince(value, depth=1)
