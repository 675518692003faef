"""The client's chat at /chat/: her conversations with her consultant's assistant.

She sees only what was sent to her. While the assistant works, or her consultant reviews the
draft, the thread says so; the page polls (`chat_live`, 204 while nothing changed) and shows
the answer the moment it is sent, without a reload.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.pages import is_htmx, tenant_page
from accounts.roles import CLIENT
from billing.limiter import HardCapReached, LimiterUnavailable, RateLimited
from conversations import actions
from conversations.models import Conversation
from conversations.threads import load_thread
from tenants.branding import request_role

CLIENTS = frozenset({CLIENT})
CHAT_ONLY = "The chat is where clients talk to the assistant; your team works in the dashboard."
MAX_QUESTION_LENGTH = 20_000


class Refusal(Exception):
    """A question that was not accepted: nothing was saved."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def _check_body(body: str) -> None:
    if not body:
        raise Refusal(422, "Write your question first.")
    if len(body) > MAX_QUESTION_LENGTH:
        raise Refusal(
            422, f"That is too long ({len(body):,} characters; at most {MAX_QUESTION_LENGTH:,})."
        )


def _ask(request: HttpRequest, conversation: Conversation, body: str) -> None:
    """Post the client's question (the limiter admits it first; a refusal saves nothing)."""
    try:
        with transaction.atomic():
            actions.post_message(
                acting_user=request.user,
                role=request_role(request),
                conversation=conversation,
                body=body,
            )
    except RateLimited as exc:
        raise Refusal(
            429,
            f"You are sending questions faster than the assistant can take them. Try again in "
            f"{exc.retry_after} seconds; nothing was sent.",
            retry_after=exc.retry_after,
        ) from None
    except HardCapReached:
        raise Refusal(
            402,
            "The assistant has reached its usage limit for this month, so it cannot take new "
            "questions. Your consultant has been told; nothing was sent.",
        ) from None
    except LimiterUnavailable:
        raise Refusal(
            503,
            "The assistant is briefly unavailable. Try again in a minute; nothing was sent.",
            retry_after=30,
        ) from None


def _my_conversations(request: HttpRequest) -> Any:
    return Conversation.objects.filter(client_id=request.user.pk).order_by("-updated_at", "-id")


def _my_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> Conversation:
    # Someone else's conversation -- of her tenant or another -- is the same 404 as a missing one.
    return get_object_or_404(_my_conversations(request), id=conversation_id)


def _refusal_response(
    request: HttpRequest, refusal: Refusal, *, template: str, context: dict[str, Any]
) -> HttpResponse:
    if is_htmx(request):
        response = render(
            request,
            "conversations/_composer_error.html",
            {"error": refusal.message},
            status=refusal.status,
        )
        response["HX-Retarget"] = "#composer-error"
        response["HX-Reswap"] = "innerHTML"
    elif refusal.status == 429:
        response = render(
            request,
            "429.html",
            {"retry_after": refusal.retry_after, "message": refusal.message},
            status=429,
        )
    else:
        response = render(
            request,
            template,
            {**context, "error": refusal.message},
            status=refusal.status,
        )
    if refusal.retry_after:
        response["Retry-After"] = str(refusal.retry_after)
    return response


def title_from_question(question: str) -> str:
    """A conversation title from its first question: its first line, at most 80 characters,
    cut at a word."""
    line = " ".join(question.split())
    if len(line) <= 80:
        return line
    cut = line[:80].rsplit(" ", 1)[0]
    return (cut or line[:80]).rstrip(",.;:") + "…"


@tenant_page(CLIENTS, message=CHAT_ONLY)
@require_GET
def chat_home(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/home.html", {"conversations": _my_conversations(request)})


@tenant_page(CLIENTS, message=CHAT_ONLY)
@require_POST
def chat_new(request: HttpRequest) -> HttpResponse:
    question = request.POST.get("question", "").strip()
    title = " ".join(request.POST.get("title", "").split())[:200]
    context = {"conversations": _my_conversations(request), "question": question, "title": title}
    try:
        _check_body(question)
        with transaction.atomic():
            conversation = actions.create_conversation(
                acting_user=request.user,
                client=request.user,  # type: ignore[arg-type]
                title=title or title_from_question(question),
            )
            _ask(request, conversation, question)
    except Refusal as refusal:
        return _refusal_response(request, refusal, template="chat/home.html", context=context)
    url = reverse("chat-thread", args=[conversation.id])
    if is_htmx(request):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return HttpResponseRedirect(url)


def _thread_context(request: HttpRequest, conversation: Conversation) -> dict[str, Any]:
    return {
        "thread": load_thread(conversation, for_client=True),
        "for_client": True,
        "live_url": reverse("chat-live", args=[conversation.id]),
    }


@tenant_page(CLIENTS, message=CHAT_ONLY)
@require_GET
def chat_thread(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _my_conversation(request, conversation_id)
    return render(
        request,
        "chat/thread.html",
        {
            "conversation": conversation,
            "conversations": _my_conversations(request),
            **_thread_context(request, conversation),
        },
    )


@tenant_page(CLIENTS, message=CHAT_ONLY)
@require_GET
def chat_live(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _my_conversation(request, conversation_id)
    context = _thread_context(request, conversation)
    if request.GET.get("v") == context["thread"].version:
        return HttpResponse(status=204)
    return render(request, "conversations/_thread.html", context)


@tenant_page(CLIENTS, message=CHAT_ONLY)
@require_POST
def chat_post(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _my_conversation(request, conversation_id)
    body = request.POST.get("body", "").strip()
    try:
        _check_body(body)
        _ask(request, conversation, body)
    except Refusal as refusal:
        context = {
            "conversation": conversation,
            "conversations": _my_conversations(request),
            "body": body,
            **_thread_context(request, conversation),
        }
        return _refusal_response(request, refusal, template="chat/thread.html", context=context)
    if not is_htmx(request):
        messages.success(request, "Sent.")
        return HttpResponseRedirect(reverse("chat-thread", args=[conversation.id]))
    return render(
        request, "conversations/_thread_sent.html", _thread_context(request, conversation)
    )
