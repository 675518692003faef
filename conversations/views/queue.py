"""The consultant's review queue at /app/: every AI draft waiting for her, newest first.

Decisions (approve, edit, override, reject) are plain POST forms that HTMX upgrades: with HTMX
the decided card leaves the list in place and a toast confirms; without JavaScript the page
reloads with the same message. The list updates itself: `queue_live` is polled every few
seconds with the ids on screen and answers 204 when nothing changed, or the new cards and the
ids to remove (out-of-band swaps), so a draft being edited is never re-rendered under the
consultant's cursor.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_POST

from accounts.models import Membership, User
from accounts.pages import is_htmx, tenant_page
from accounts.roles import TEAM
from agents.models import Document
from agents.runs import REVIEW_ACTIONS, ReviewError, review_draft
from conversations.models import Conversation, Message
from conversations.queue import (
    QUEUE_PAGE_SIZE,
    DraftCard,
    QueueFilters,
    draft_cards,
    waiting_drafts,
)
from tenants.models import Credential

DECISION_TOASTS = {
    "approve": "The draft was sent to {client}.",
    "edit": "Your edited answer was sent to {client}.",
    "override": "Your own answer was sent to {client}.",
    "reject": "Draft rejected: nothing was sent to {client}.",
}
MAX_ANSWER_LENGTH = 20_000


def queue_stats() -> dict[str, Any]:
    drafts = waiting_drafts()
    oldest = drafts.order_by("created_at").values_list("created_at", flat=True).first()
    day_start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "waiting": drafts.count(),
        "oldest": oldest,
        "reviewed_today": Message.objects.filter(reviewed_at__gte=day_start).count(),
        "conversations_this_week": Conversation.objects.filter(
            updated_at__gte=timezone.now() - timedelta(days=7)
        ).count(),
    }


def onboarding_steps() -> list[dict[str, Any]]:
    """What a new tenant should do next, in order; empty once the essentials are done."""
    has_documents = Document.objects.filter(status=Document.Status.READY).exists()
    has_clients = Membership.objects.filter(role=Membership.Role.CLIENT).exists()
    has_model_key = Credential.objects.filter(
        kind__in=[
            Credential.Kind.OPENAI,
            Credential.Kind.ANTHROPIC,
            Credential.Kind.OPENAI_COMPATIBLE,
        ]
    ).exists()
    has_reviewed = Message.objects.filter(reviewed_at__isnull=False).exists()
    if has_documents and has_clients:
        return []
    return [
        {
            "done": has_documents,
            "label": "Upload your playbook",
            "detail": "Your method as documents (Markdown, text, HTML or PDF): the agent answers "
            "from them and cites them.",
            "url": reverse("app-playbook"),
            "action": "Upload a document",
        },
        {
            "done": has_clients,
            "label": "Invite a client",
            "detail": "Clients chat with your agent at /chat/; you review every answer first.",
            "url": reverse("app-team"),
            "action": "Invite a client",
        },
        {
            "done": has_model_key,
            "label": "Connect a language model (optional)",
            "detail": "Without a provider key the built-in offline responder answers from your "
            "playbook passages and says so.",
            "url": reverse("app-tools"),
            "action": "Choose a model",
        },
        {
            "done": has_reviewed,
            "label": "Review the first draft",
            "detail": "Drafts appear here as soon as a client asks a question.",
            "url": "",
            "action": "",
        },
    ]


def queue_clients() -> list[User]:
    clients = Membership.objects.filter(role=Membership.Role.CLIENT).values("user_id")
    return list(User.objects.filter(id__in=clients).order_by("first_name", "last_name", "email"))


@tenant_page(TEAM)
@require_GET
def queue_page(request: HttpRequest) -> HttpResponse:
    filters = QueueFilters.from_query(request.GET)
    drafts = filters.apply(waiting_drafts())
    total = drafts.count()
    conversation = (
        Conversation.objects.filter(id=filters.conversation).first()
        if filters.conversation
        else None
    )
    return render(
        request,
        "app/queue.html",
        {
            "cards": draft_cards(drafts[:QUEUE_PAGE_SIZE]),
            "total": total,
            "page_size": QUEUE_PAGE_SIZE,
            "filters": filters,
            "filter_query": urlencode(filters.as_query()),
            "filter_conversation": conversation,
            "clients": queue_clients(),
            "stats": queue_stats(),
            "onboarding": onboarding_steps(),
        },
    )


def _shown_ids(request: HttpRequest) -> list[str]:
    shown = []
    for raw in request.GET.getlist("shown")[: QUEUE_PAGE_SIZE * 2]:
        try:
            shown.append(str(uuid.UUID(raw)))
        except ValueError:
            continue
    return shown


@tenant_page(TEAM)
@require_GET
def queue_live(request: HttpRequest) -> HttpResponse:
    """Polled by the queue page: new drafts to add, decided ones to remove, the count."""
    filters = QueueFilters.from_query(request.GET)
    shown = _shown_ids(request)
    drafts = filters.apply(waiting_drafts())
    current = [str(i) for i in drafts.values_list("id", flat=True)[:QUEUE_PAGE_SIZE]]
    new = [i for i in current if i not in shown]
    gone = [i for i in shown if i not in current]
    waiting = waiting_drafts().count()
    if not new and not gone and request.GET.get("waiting") == str(waiting):
        return HttpResponse(status=204)
    by_id = {str(card.id): card for card in draft_cards(waiting_drafts().filter(id__in=new))}
    return render(
        request,
        "app/_queue_live.html",
        {
            "new_cards": [by_id[i] for i in new if i in by_id],
            "gone": gone,
            "waiting": waiting,
            "stats": queue_stats(),
            "filters": filters,
            "filter_query": urlencode(filters.as_query()),
            "insert": "beforeend" if filters.oldest_first else "afterbegin",
        },
    )


def _back_to_queue(request: HttpRequest) -> HttpResponseRedirect:
    target = request.POST.get("next", "")
    if not target or not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("app-queue")
    return HttpResponseRedirect(target)


def _card_response(
    request: HttpRequest, card: DraftCard, *, status: int, error: str, open_editor: str = ""
) -> HttpResponse:
    return render(
        request,
        "app/_draft.html",
        {
            "card": card,
            "error": error,
            "open_editor": open_editor,
            "text": request.POST.get("text", ""),
            "note": request.POST.get("note", ""),
        },
        status=status,
    )


@tenant_page(TEAM)
@require_POST
def decide(request: HttpRequest, message_id: uuid.UUID, action: str) -> HttpResponse:
    """Approve, edit, override or reject a draft (resumes its paused agent run)."""
    if action not in REVIEW_ACTIONS:
        raise Http404
    message = get_object_or_404(
        Message.objects.select_related("conversation", "conversation__client"),
        id=message_id,
        sender__in=[Message.Sender.AGENT, Message.Sender.CONSULTANT],
    )
    card = draft_cards([message])[0]
    if card.run is None:
        raise Http404
    text = request.POST.get("text", "").strip()
    note = request.POST.get("note", "").strip()[:2000]
    error = ""
    if action in ("edit", "override") and not text:
        error = "Write the answer to send; nothing was sent."
    elif len(text) > MAX_ANSWER_LENGTH:
        error = f"The answer is too long ({len(text):,} characters; at most {MAX_ANSWER_LENGTH:,})."
    if error:
        if is_htmx(request):
            return _card_response(request, card, status=422, error=error, open_editor=action)
        messages.error(request, error)
        return _back_to_queue(request)
    try:
        review_draft(
            message=message,
            reviewer=request.user,  # type: ignore[arg-type]
            action=action,
            text=text,
            note=note,
        )
    except ReviewError as exc:
        message.refresh_from_db()
        if is_htmx(request):
            return _card_response(request, card, status=409, error=str(exc))
        messages.error(request, str(exc))
        return _back_to_queue(request)
    toast = DECISION_TOASTS[action].format(client=card.client_name)
    if not is_htmx(request):
        messages.success(request, toast)
        return _back_to_queue(request)
    response = render(request, "app/_queue_counts.html", {"waiting": waiting_drafts().count()})
    response["HX-Trigger"] = json.dumps({"toast": {"message": toast}})
    return response
