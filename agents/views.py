"""Dashboard pages of the agent platform: the playbook's documents (/app/playbook/) and the
agent's tools, models, prompt and review policy (/app/tools/).

Uploads are plain multipart forms that HTMX upgrades (with a progress bar for the bytes sent);
each document's row then polls itself every second while it is being ingested, so its
progress bar climbs to 100% without a reload.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.pages import is_htmx, tenant_page
from accounts.roles import ADMINS, TEAM
from agents import registry
from agents.corpus import SUPPORTED_DESCRIPTION
from agents.documents import (
    LIVE_STATUSES,
    UploadRejected,
    add_document,
    check_upload,
    delete_document,
    document_progress,
    reingest_document,
)
from agents.entitlements import (
    MAX_PROMPT_LENGTH,
    MODEL_PROVIDERS,
    NotInPlan,
    remove_entitlement,
    set_entitlement,
)
from agents.models import Document, EntitlementKind, PlanEntitlement, TenantEntitlement
from agents.tools import TOOLS
from tenants.actions import set_review_policy
from tenants.branding import request_role, request_tenant
from tenants.models import Credential

MAX_FILES_PER_UPLOAD = 10

# ------------------------------------------------------------------------ playbook documents


def _documents() -> Any:
    return Document.objects.defer("source").select_related("created_by").order_by("-created_at")


def document_row_context(document: Document) -> dict[str, Any]:
    return {
        "document": document,
        "progress": document_progress(document),
        "live": document.status in LIVE_STATUSES,
    }


def _playbook_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    documents = list(_documents())
    return {
        "rows": [document_row_context(d) for d in documents],
        "ready": sum(1 for d in documents if d.status == Document.Status.READY),
        "chunks": Document.objects.aggregate(total=Sum("chunk_count"))["total"] or 0,
        "supported": SUPPORTED_DESCRIPTION,
        "max_files": MAX_FILES_PER_UPLOAD,
        **extra,
    }


@tenant_page(TEAM)
@require_GET
def playbook_page(request: HttpRequest) -> HttpResponse:
    return render(request, "agents/playbook.html", _playbook_context(request))


@tenant_page(TEAM)
@require_POST
def playbook_upload(request: HttpRequest) -> HttpResponse:
    """One or more files (field `file`), optional `title` for a single file. Every file is
    checked before any is stored: one bad file stores nothing and says which and why."""
    files = [f for f in request.FILES.getlist("file") if isinstance(f, UploadedFile)]
    errors: list[str] = []
    if not files:
        errors.append("Choose a file to upload.")
    elif len(files) > MAX_FILES_PER_UPLOAD:
        errors.append(f"Upload at most {MAX_FILES_PER_UPLOAD} files at a time.")
    uploads = []
    status = 400
    for file in files[:MAX_FILES_PER_UPLOAD] if not errors else []:
        try:
            uploads.append(check_upload(file))
        except UploadRejected as rejected:
            errors.append(rejected.message)
            status = max(status, rejected.status)  # 413 when a file is too large
    if errors:
        if is_htmx(request):
            response = render(
                request, "agents/_upload_errors.html", {"errors": errors}, status=status
            )
            response["HX-Retarget"] = "#upload-errors"
            response["HX-Reswap"] = "innerHTML"
            return response
        return render(
            request,
            "agents/playbook.html",
            _playbook_context(request, upload_errors=errors),
            status=status,
        )
    title = request.POST.get("title", "") if len(uploads) == 1 else ""
    with transaction.atomic():
        added = [add_document(acting_user=request.user, upload=u, title=title) for u in uploads]
    note = (
        f"“{added[0].title}” uploaded; it is being added to your playbook."
        if len(added) == 1
        else f"{len(added)} documents uploaded; they are being added to your playbook."
    )
    if not is_htmx(request):
        messages.success(request, note)
        return HttpResponseRedirect(reverse("app-playbook"))
    return render(request, "agents/_documents.html", _playbook_context(request, note=note))


def _document(document_id: uuid.UUID) -> Document:
    return get_object_or_404(Document.objects.defer("source"), id=document_id)


@tenant_page(TEAM)
@require_GET
def document_row(request: HttpRequest, document_id: uuid.UUID) -> HttpResponse:
    """One document's row: polled every second while it is being ingested."""
    document = _document(document_id)
    return render(request, "agents/_document_row.html", document_row_context(document))


@tenant_page(TEAM)
@require_POST
def document_reingest(request: HttpRequest, document_id: uuid.UUID) -> HttpResponse:
    document = reingest_document(acting_user=request.user, document=_document(document_id))
    if is_htmx(request):
        return render(request, "agents/_document_row.html", document_row_context(document))
    messages.success(request, f"“{document.title}” is being ingested again.")
    return HttpResponseRedirect(reverse("app-playbook"))


@tenant_page(TEAM)
@require_POST
def document_delete(request: HttpRequest, document_id: uuid.UUID) -> HttpResponse:
    document = _document(document_id)
    title = document.title
    delete_document(acting_user=request.user, document=document)
    if is_htmx(request):
        return render(
            request,
            "agents/_documents.html",
            _playbook_context(request, note=f"“{title}” was deleted from your playbook."),
        )
    messages.success(request, f"“{title}” was deleted from your playbook.")
    return HttpResponseRedirect(reverse("app-playbook"))


# ------------------------------------------------------------------------ tools and models

REVIEW_POLICIES = [
    (
        "review_all",
        "Review every answer",
        "Every draft waits in your queue; nothing reaches a client before you send it.",
    ),
    (
        "flagged",
        "Review only what needs you",
        "Well-covered answers go straight to the client; low-confidence answers and handoffs "
        "wait for you.",
    ),
    (
        "auto_send",
        "Send answers straight away",
        "Answers go to the client at once; only handoffs wait for you.",
    ),
]
PROVIDER_LABELS = {
    "offline": "Offline responder (built in)",
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "openai_compatible": "OpenAI-compatible (Ollama, vLLM, …)",
}


def _tool_rows(resolved: registry.Resolved, ceiling: registry.Ceiling) -> list[dict[str, Any]]:
    in_plan = set(
        PlanEntitlement.objects.filter(plan=ceiling.plan, kind=EntitlementKind.TOOL).values_list(
            "name", flat=True
        )
    )
    own = {row.name: row for row in TenantEntitlement.objects.filter(kind=EntitlementKind.TOOL)}
    rows = []
    for name, spec in sorted(TOOLS.items()):
        row = own.get(name)
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "enabled": name in resolved.tools,
                "in_plan": name in in_plan,
                # Within the plan or an operator's override: the tenant may turn it on.
                "allowed": ceiling.admits(EntitlementKind.TOOL, name, {}),
                "revoked": row is not None and row.effect == TenantEntitlement.Effect.REVOKE,
                "config": resolved.tools.get(name, row.config if row else {}),
            }
        )
    return rows


def _model_rows(resolved: registry.Resolved) -> list[dict[str, Any]]:
    from agents.credentials import has_credential

    default = resolved.default_model
    own = {row.name: row for row in TenantEntitlement.objects.filter(kind=EntitlementKind.MODEL)}
    rows = []
    for name, config in sorted(resolved.models.items()):
        provider = str(config.get("provider", "offline"))
        connected = provider == "offline" or has_credential(provider, config.get("credential"))
        rows.append(
            {
                "name": name,
                "provider": PROVIDER_LABELS.get(provider, provider),
                "offline": provider == "offline",
                "model": config.get("model") or name,
                "temperature": config.get("temperature"),
                "credential": config.get("credential") or "",
                "base_url": config.get("base_url") or "",
                "default": default is not None and default[0] == name,
                "connected": connected,
                "own": name in own,
            }
        )
    return rows


def _tools_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    tenant = request_tenant(request)
    assert tenant is not None  # noqa: S101 (tenant_page guarantees a tenant)
    resolved = registry.resolve()
    prompt_row = TenantEntitlement.objects.filter(
        kind=EntitlementKind.PROMPT, name="system"
    ).first()
    return {
        "resolved": resolved,
        "plan_label": tenant.get_plan_display(),
        "tools": _tool_rows(resolved, registry.ceiling_for(tenant)),
        "models": _model_rows(resolved),
        "system_prompt": resolved.system_prompt,
        "custom_prompt": bool(prompt_row and prompt_row.config.get("text")),
        "default_prompt": registry.DEFAULT_SYSTEM_PROMPT,
        "max_prompt": MAX_PROMPT_LENGTH,
        "policies": REVIEW_POLICIES,
        "review_policy": tenant.review_policy,
        "providers": [(p, PROVIDER_LABELS[p]) for p in MODEL_PROVIDERS],
        "credentials": Credential.objects.defer("ciphertext", "nonce").order_by("name"),
        "can_edit": request_role(request) in ADMINS,
        "form": {},
        "errors": {},
        **extra,
    }


@tenant_page(TEAM)
@require_GET
def tools_page(request: HttpRequest) -> HttpResponse:
    return render(request, "agents/tools.html", _tools_context(request))


def _refuse(
    request: HttpRequest, section: str, errors: list[str], form: Any, *, status: int = 400
) -> HttpResponse:
    return render(
        request,
        "agents/tools.html",
        _tools_context(
            request, errors={section.replace("-", "_"): errors}, form=form, open_section=section
        ),
        status=status,
    )


def _flatten(error: ValidationError) -> list[str]:
    if hasattr(error, "error_dict"):
        return [m for messages_ in error.message_dict.values() for m in messages_]
    return list(error.messages)


def _float(raw: str, default: float) -> float | None:
    if not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        return None


@tenant_page(ADMINS, message="Only your organisation's owners and admins change the agent.")
@require_POST
def tools_change(request: HttpRequest, section: str) -> HttpResponse:
    """Every change on the Tools & models page: one section per form."""
    user, post = request.user, request.POST
    try:
        if section == "tool":
            name = post.get("name", "")
            if name not in TOOLS:
                return _refuse(request, "tool", ["Unknown tool."], post)
            if post.get("enabled") == "1":
                config: dict[str, Any] = {}
                if name == "http_request":
                    url = post.get("url", "").strip()
                    if not url.startswith(("https://", "http://")):
                        return _refuse(
                            request,
                            "tool",
                            ["Give the address of your system (https://…) for HTTP requests."],
                            post,
                        )
                    config = {
                        "url": url,
                        "method": "POST" if post.get("method") == "POST" else "GET",
                        "timeout": _float(post.get("timeout", ""), 10) or 10,
                    }
                    if post.get("credential"):
                        config["credential"] = post["credential"]
                set_entitlement(
                    acting_user=user,
                    kind=EntitlementKind.TOOL,
                    name=name,
                    effect="grant",
                    config=config,
                )
                messages.success(request, f"The agent may now use {name}.")
            else:
                set_entitlement(
                    acting_user=user, kind=EntitlementKind.TOOL, name=name, effect="revoke"
                )
                messages.success(request, f"The agent can no longer use {name}.")
        elif section == "model":
            name = " ".join(post.get("name", "").split())[:100]
            provider = post.get("provider", "")
            temperature = _float(post.get("temperature", ""), 0.2)
            if not name:
                return _refuse(request, "model", ["Give the model a name."], post)
            if temperature is None:
                return _refuse(request, "model", ["Temperature is a number from 0 to 2."], post)
            config = {"provider": provider, "temperature": temperature}
            for key in ("model", "credential", "base_url"):
                value = post.get(key, "").strip()
                if value:
                    config[key] = value
            if provider != "offline" and "model" not in config:
                return _refuse(
                    request, "model", ["Give the provider's model id (e.g. gpt-4o-mini)."], post
                )
            set_entitlement(
                acting_user=user,
                kind=EntitlementKind.MODEL,
                name=name,
                effect="grant",
                config=config,
            )
            messages.success(request, f"Model {name} added.")
        elif section == "default-model":
            _make_default(request, post.get("name", ""))
        elif section == "remove-model":
            name = post.get("name", "")
            row = TenantEntitlement.objects.filter(kind=EntitlementKind.MODEL, name=name).first()
            if row is not None and row.effect == TenantEntitlement.Effect.GRANT:
                remove_entitlement(acting_user=user, row=row)
            if name in registry.resolve().models:  # still there: a plan default
                set_entitlement(
                    acting_user=user, kind=EntitlementKind.MODEL, name=name, effect="revoke"
                )
            messages.success(request, f"Model {name} removed.")
        elif section == "prompt":
            text = post.get("text", "").strip()
            row = TenantEntitlement.objects.filter(kind=EntitlementKind.PROMPT, name="system")
            if post.get("reset") == "1" or not text:
                for found in row:
                    remove_entitlement(acting_user=user, row=found)
                messages.success(request, "The agent uses the default instructions again.")
            else:
                set_entitlement(
                    acting_user=user,
                    kind=EntitlementKind.PROMPT,
                    name="system",
                    effect="grant",
                    config={"text": text},
                )
                messages.success(request, "The agent's instructions were saved.")
        elif section == "review-policy":
            policy = post.get("review_policy", "")
            if policy not in {p[0] for p in REVIEW_POLICIES}:
                return _refuse(request, "review-policy", ["Choose one of the options."], post)
            set_review_policy(acting_user=user, policy=policy)
            messages.success(request, "Review policy saved.")
        else:
            return _refuse(request, "tool", ["Unknown change."], post)
    except ValidationError as error:
        return _refuse(request, section, _flatten(error), post)
    except NotInPlan as refusal:
        # The plan is a ceiling: the same refusal as the API's 403, as a form error.
        return _refuse(request, section, [refusal.message], post, status=403)
    return HttpResponseRedirect(reverse("app-tools") + f"#{section}")


def _make_default(request: HttpRequest, name: str) -> None:
    resolved = registry.resolve()
    if name not in resolved.models:
        raise ValidationError("That model is not available to your agent.")
    with transaction.atomic():
        for other, config in resolved.models.items():
            wanted = other == name
            if bool(config.get("default")) != wanted:
                set_entitlement(
                    acting_user=request.user,
                    kind=EntitlementKind.MODEL,
                    name=other,
                    effect="grant",
                    config={**config, "default": wanted},
                )
    messages.success(request, f"{name} answers your clients from now on.")
