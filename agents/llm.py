"""Chat models: provider models through langchain, or the built-in offline responder.

The model, temperature and provider come from the tenant's `model` entitlement; the key
from the tenant's credential (agents.credentials). With no key, the extractive responder
answers from the retrieved playbook passages (and the consultant's past corrections), with
citations, and says that it is the offline responder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from agents.credentials import has_credential, using_credential
from agents.registry import Resolved
from tenants.outbound import async_model_http_client, model_http_client

OFFLINE_MODEL = "offline-extractive"
OFFLINE_NOTICE = (
    "I'm Playbook's offline responder: no AI model is connected for this playbook yet, so "
    "I answer with your consultant's own material."
)
CONTEXT_KEY = "playbook_context"

_override: ContextVar[BaseChatModel | None] = ContextVar("chat_model_override", default=None)


@contextmanager
def use_chat_model(model: BaseChatModel) -> Iterator[None]:
    """Run agents with this chat model instead of the entitled one. For tests, which drive
    runs with langchain-core's scripted fake chat models (providers are unreachable here)."""
    token = _override.set(model)
    try:
        yield
    finally:
        _override.reset(token)


_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


# A paraphrase of a question the consultant corrected (cosine similarity of the questions).
SIMILAR_QUESTION = 0.5


_STOPWORDS_TEXT = (
    "the and for are but not you your with have this that what which when where who how why "
    "can could should would will shall may might must does did doing been being from into "
    "about over under than then them they their there these those our ours out its it's "
    "any all some many much more most such very just also only own same too each other "
    "get got make made need want like know think tell give take"
)
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split(" "))


def _content_words(text: str) -> set[str]:
    return {w.rstrip("s") for w in _words(text) if w not in _STOPWORDS}


def _coverage(question: str, text: str) -> float:
    wanted = _content_words(question)
    if not wanted:
        return 0.0
    return len(wanted & _content_words(text)) / len(wanted)


def _best_sentences(text: str, question: str, limit: int = 2) -> str:
    # Prose only: drop Markdown headings, join wrapped lines, then split into sentences.
    prose = " ".join(
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", prose) if s.strip()]
    wanted = _words(question)
    ranked = sorted(sentences, key=lambda s: -len(_words(s) & wanted))
    chosen = [s for s in sentences if s in ranked[:limit]]
    excerpt = " ".join(chosen) or text[:280]
    return excerpt if len(excerpt) <= 400 else excerpt[:397] + "…"


def compose_offline_answer(context: dict[str, Any]) -> tuple[str, str]:
    """(answer, confidence) from {"question", "passages", "corrections"}."""
    question = str(context.get("question", ""))
    corrections = context.get("corrections") or []
    passages = context.get("passages") or []
    parts = [OFFLINE_NOTICE]
    confidence = "low"
    if corrections and corrections[0].get("score", 0) >= SIMILAR_QUESTION:
        parts.append(
            "Your consultant answered a very similar question before:\n\n"
            + str(corrections[0]["final"])
        )
        confidence = "high"
    if passages:
        lines = [
            f"[{i}] {p['title']}: “{_best_sentences(p['text'], question)}”"
            for i, p in enumerate(passages[:3], start=1)
        ]
        parts.append("From the playbook:\n" + "\n".join(lines))
        if confidence != "high":
            # How much of the question the best passages actually speak to (vector scores of
            # the hashing embedder are too coarse to tell an off-topic passage apart).
            coverage = _coverage(question, " ".join(p["text"] for p in passages[:3]))
            confidence = "high" if coverage >= 0.6 else "medium" if coverage >= 0.3 else "low"
    if not corrections and not passages:
        parts.append(
            "I found nothing in the playbook about this, so your consultant will answer you."
        )
    return "\n\n".join(parts), confidence


class ExtractiveResponder(BaseChatModel):
    """Answers only from the passages and corrections the agent retrieved (no tools)."""

    @property
    def _llm_type(self) -> str:
        return OFFLINE_MODEL

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        context: dict[str, Any] = {}
        for message in messages:
            if isinstance(message, SystemMessage) and CONTEXT_KEY in message.additional_kwargs:
                context = message.additional_kwargs[CONTEXT_KEY]
        answer, confidence = compose_offline_answer(context)
        # No provider counts tokens here: report the usual estimate (4 characters a token), so
        # usage charts show the work done even though it costs nothing.
        read = sum(len(str(m.content)) for m in messages) // 4
        written = len(answer) // 4
        message = AIMessage(
            content=answer,
            response_metadata={"model_name": OFFLINE_MODEL, "confidence": confidence},
            usage_metadata={
                "input_tokens": read,
                "output_tokens": written,
                "total_tokens": read + written,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def _bind(model: BaseChatModel, tool_schemas: list[dict[str, Any]]) -> Any:
    if not tool_schemas or isinstance(model, ExtractiveResponder):
        return model
    try:
        return model.bind_tools(tool_schemas)
    except NotImplementedError:  # a model without tool calling answers without tools
        return model


def _provider_model(
    provider: str, config: dict[str, Any], credential: dict[str, Any]
) -> BaseChatModel:
    model = str(config.get("model") or "")
    temperature = float(config.get("temperature", 0.2))
    # Every provider's HTTP goes through tenants.outbound: a base_url on a private network is
    # refused (OutboundRefused) before the key is sent anywhere.
    if provider == "anthropic":
        from agents.anthropic_chat import OutboundChatAnthropic

        return OutboundChatAnthropic(  # type: ignore[call-arg]
            model=model, temperature=temperature, api_key=credential["secret"], timeout=60
        )
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=model,
        temperature=temperature,
        api_key=credential["secret"],
        base_url=config.get("base_url") or credential.get("base_url") or None,
        timeout=60,
        http_client=model_http_client(),
        http_async_client=async_model_http_client(),
    )


@dataclass
class ModelHandle:
    """The tenant's model for this run. A provider model is built per call, inside
    `using_credential`, so its key is decrypted for that call only."""

    name: str
    fixed: BaseChatModel | None = None
    provider: str = "offline"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return isinstance(self.fixed, ExtractiveResponder)

    def invoke(self, messages: list[BaseMessage], tool_schemas: list[dict[str, Any]]) -> Any:
        if self.fixed is not None:
            return _bind(self.fixed, tool_schemas).invoke(messages)
        with using_credential(self.provider, self.config.get("credential")) as credential:
            model = _provider_model(self.provider, self.config, credential)
            return _bind(model, tool_schemas).invoke(messages)


PROVIDERS = ("openai", "anthropic", "openai_compatible")


def chat_model_for(resolved: Resolved) -> ModelHandle:
    """The tenant's default entitled model; the offline responder without a key for it."""
    override = _override.get()
    if override is not None:
        name = getattr(override, "model_name", None) or type(override).__name__
        return ModelHandle(name=str(name), fixed=override)
    chosen = resolved.default_model
    if chosen is None:
        return ModelHandle(name=OFFLINE_MODEL, fixed=ExtractiveResponder())
    name, config = chosen
    provider = str(config.get("provider", "offline"))
    if provider not in PROVIDERS or not has_credential(provider, config.get("credential")):
        return ModelHandle(name=OFFLINE_MODEL, fixed=ExtractiveResponder())
    return ModelHandle(
        name=str(config.get("model") or name),
        provider=provider,
        config={"model": name, **config},
    )
