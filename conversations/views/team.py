"""The team's conversations at /app/conversations/: every client's thread, drafts included,
and a reply box to write to the client directly (no agent run)."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.pages import is_htmx, paginate, tenant_page
from accounts.roles import TEAM
from conversations import actions
from conversations.models import Conversation, Message
from conversations.queue import client_id
from conversations.threads import load_thread
from conversations.views.queue import queue_clients
from tenants.branding import request_role

MAX_MESSAGE_LENGTH = 20_000


@tenant_page(TEAM)
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    conversations = Conversation.objects.select_related("client").annotate(
        message_count=Count(
            "messages", filter=Q(messages__status=Message.Status.SENT), distinct=True
        ),
        drafts_waiting=Count(
            "messages",
            filter=Q(messages__status=Message.Status.DRAFT, messages__sender=Message.Sender.AGENT),
            distinct=True,
        ),
    )
    q = " ".join(request.GET.get("q", "").split())[:200]
    client = request.GET.get("client", "")
    client_filter = client_id(client)
    waiting_only = request.GET.get("waiting") == "1"
    if q:
        conversations = conversations.filter(title__icontains=q)
    if client_filter is not None:
        conversations = conversations.filter(client_id=client_filter)
    if waiting_only:
        conversations = conversations.filter(drafts_waiting__gt=0)
    page, query = paginate(request, conversations.order_by("-updated_at", "-id"), 25)
    return render(
        request,
        "app/conversations.html",
        {
            "page": page,
            "q": q,
            "client": client_filter,
            "waiting_only": waiting_only,
            "clients": queue_clients(),
            "query": query,
            "filtered": bool(q or client or waiting_only),
        },
    )


def _conversation(conversation_id: uuid.UUID) -> Conversation:
    # Another tenant's conversation is invisible to the database: the same 404 as a missing one.
    return get_object_or_404(Conversation.objects.select_related("client"), id=conversation_id)


@tenant_page(TEAM)
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _conversation(conversation_id)
    return render(
        request,
        "app/conversation.html",
        {
            "conversation": conversation,
            "thread": load_thread(conversation, for_client=False),
            "live_url": reverse("app-conversation-live", args=[conversation.id]),
            "drafts_waiting": conversation.messages.filter(
                status=Message.Status.DRAFT, sender=Message.Sender.AGENT
            ).count(),
        },
    )


@tenant_page(TEAM)
@require_GET
def conversation_live(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _conversation(conversation_id)
    thread = load_thread(conversation, for_client=False)
    if request.GET.get("v") == thread.version:
        return HttpResponse(status=204)
    return render(
        request,
        "conversations/_thread.html",
        {
            "thread": thread,
            "for_client": False,
            "live_url": reverse("app-conversation-live", args=[conversation.id]),
        },
    )


@tenant_page(TEAM)
@require_POST
def conversation_reply(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """The consultant writes to the client herself: sent at once, no agent run."""
    conversation = _conversation(conversation_id)
    body = request.POST.get("body", "").strip()
    live_url = reverse("app-conversation-live", args=[conversation.id])
    error = ""
    if not body:
        error = "Write a message first."
    elif len(body) > MAX_MESSAGE_LENGTH:
        error = f"The message is too long ({len(body):,} characters; at most 20,000)."
    if error:
        if is_htmx(request):
            response = render(
                request, "conversations/_composer_error.html", {"error": error}, status=422
            )
            response["HX-Retarget"] = "#composer-error"
            response["HX-Reswap"] = "innerHTML"
            return response
        messages.error(request, error)
        return HttpResponseRedirect(reverse("app-conversation", args=[conversation.id]))
    actions.post_message(
        acting_user=request.user,
        role=request_role(request),
        conversation=conversation,
        body=body,
    )
    if not is_htmx(request):
        messages.success(request, f"Sent to {conversation.client.get_full_name() or 'the client'}.")
        return HttpResponseRedirect(reverse("app-conversation", args=[conversation.id]))
    return render(
        request,
        "conversations/_thread_sent.html",
        {
            "thread": load_thread(conversation, for_client=False),
            "for_client": False,
            "live_url": live_url,
        },
    )
