"""The playbook page (/app/playbook/): the consultant uploads one or several documents, each
row shows its ingestion progress (and polls itself while it climbs), a bad file among good
ones stores nothing and says which file and why, and re-ingesting or deleting a document is
recorded in the audit log.

Most tests use `db`: ingestion is queued when the request commits, which never happens
there, so documents stay "Waiting". One test commits (`live_db`, eager Celery) and watches
a document become ready.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.urls import reverse

from agents.documents import Upload, add_document
from agents.models import Chunk, Document, PlanEntitlement
from config.celery import app as celery_app
from tenants.context import platform_context, tenant_context
from tests.factories import World, build_world
from tests.web import HTMX, audit_events, browser, forget_redis, text

PLAN_DEFAULTS = importlib.import_module("agents.migrations.0002_plan_defaults")

PRICING = b"# Pricing\n\nNever quote a price on the first call. Offer three packages."
ONBOARDING = b"Onboarding\n\nSend the welcome pack within a day of signing."
AGENDA = b"<h1>Board agenda</h1><p>Put decisions first, then risks.</p>"


def md(name: str = "pricing.md", data: bytes = PRICING) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="text/markdown")


def txt(name: str = "onboarding.txt", data: bytes = ONBOARDING) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="text/plain")


def html(name: str = "agenda.html", data: bytes = AGENDA) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="text/html")


@pytest.fixture
def acme(db: None) -> Iterator[World]:
    world = build_world("acme")
    yield world
    forget_redis(world)


def connor(world: World) -> Client:
    return browser(world.consultant)


def documents(world: World) -> list[Document]:
    with tenant_context(world.tenant):
        return list(Document.objects.order_by("created_at"))


def upload(client: Client, *files: SimpleUploadedFile, htmx: bool = False, **form: Any) -> Any:
    return client.post(
        reverse("app-playbook-upload"), {"file": list(files), **form}, headers=HTMX if htmx else {}
    )


def row_of(page: str, document: Document) -> str:
    found = re.search(rf'<tr id="document-{document.id}".*?</tr>', page, flags=re.S)
    assert found, f"a row for {document.title}"
    return found.group(0)


# --------------------------------------------------------------------------- uploads


def test_one_file_is_uploaded_and_its_row_shows_the_ingestion_progress(acme: World) -> None:
    mine = connor(acme)
    response = upload(mine, md(), title="  Pricing   rules ")
    assert response.status_code == 302
    assert response["Location"] == reverse("app-playbook")
    [document] = documents(acme)
    assert (document.title, document.filename, document.content_type, document.size) == (
        "Pricing rules",
        "pricing.md",
        "text/markdown",
        len(PRICING),
    )
    assert bytes(document.source) == PRICING
    assert document.created_by_id == acme.consultant.pk

    page = text(mine.get(reverse("app-playbook")))
    assert "“Pricing rules” uploaded; it is being added to your playbook." in page
    row = row_of(page, document)
    assert (
        '<progress value="0" max="100" aria-label="Ingestion of Pricing rules" '
        'aria-valuetext="0%">0%</progress>'
    ) in row
    assert '<span class="badge">Waiting</span>' in row
    # While it waits or is processed, the row polls itself every second.
    assert f'hx-get="{reverse("app-document-row", args=[document.id])}"' in row
    assert 'hx-trigger="every 1s"' in row
    assert "Re-ingest" not in row  # not while it is being ingested

    polled = mine.get(reverse("app-document-row", args=[document.id]), headers=HTMX)
    assert polled.status_code == 200
    assert text(polled).strip().startswith(f'<tr id="document-{document.id}"')

    [event] = audit_events(acme, "document.uploaded")
    assert (event.actor_id, event.resource_id) == (str(acme.consultant.pk), str(document.id))
    assert event.context["filename"] == "pricing.md"


def test_several_files_at_once_with_htmx_return_the_updated_list(acme: World) -> None:
    response = upload(connor(acme), md(), txt(), html(), htmx=True, title="Ignored")
    assert response.status_code == 200
    fragment = text(response)
    assert fragment.lstrip().startswith('<section id="documents"')
    assert "3 documents uploaded; they are being added to your playbook." in fragment
    assert '<span id="upload-errors" hx-swap-oob="innerHTML"></span>' in fragment
    stored = documents(acme)
    assert sorted(d.title for d in stored) == ["agenda", "onboarding", "pricing"]  # file names
    assert {d.content_type for d in stored} == {"text/markdown", "text/plain", "text/html"}
    for document in stored:
        assert f'aria-label="Ingestion of {document.title}"' in row_of(fragment, document)
    assert len(audit_events(acme, "document.uploaded")) == 3


def test_the_upload_form_shows_an_upload_progress_bar(acme: World) -> None:
    page = text(connor(acme).get(reverse("app-playbook")))
    assert '<progress value="0" max="100" aria-label="Upload progress"></progress>' in page
    assert 'enctype="multipart/form-data"' in page
    assert 'name="file" multiple' in page
    assert "Your playbook is empty" in page


@pytest.mark.parametrize(
    ("bad", "status", "says"),
    [
        (md("empty.md", b""), 400, "“empty.md” is empty."),
        (
            SimpleUploadedFile("contract.docx", b"PK\x03\x04", content_type="application/msword"),
            400,
            "“contract.docx” is not a supported kind of file.",
        ),
        (
            # A name that happens to contain "limit" is still a 400, not a 413.
            SimpleUploadedFile("credit-limits.exe", b"MZ", content_type="application/x-msdos"),
            400,
            "“credit-limits.exe” is not a supported kind of file.",
        ),
        (
            SimpleUploadedFile("notes.md", PRICING, content_type="application/pdf"),
            400,
            "“notes.md” is named like text/markdown but was sent as application/pdf.",
        ),
        (md("huge.md", b"x" * 2048), 413, "“huge.md” is 2,048 bytes; the limit is 1,024 bytes."),
    ],
    ids=["empty", "unsupported", "unsupported-named-limits", "mismatched", "too-large"],
)
@override_settings(PLAYBOOK_MAX_UPLOAD_BYTES=1024)
def test_a_bad_file_among_good_ones_stores_nothing_and_names_it(
    acme: World, bad: SimpleUploadedFile, status: int, says: str
) -> None:
    mine = connor(acme)
    response = upload(mine, md(), bad, txt())
    assert response.status_code == status
    page = text(response)
    assert says in page
    assert "<title>Playbook · Acme</title>" in page  # the page again, with the error
    assert documents(acme) == []
    assert audit_events(acme, "document.uploaded") == []

    bad.seek(0)
    fragment = upload(mine, md(), bad, txt(), htmx=True)
    assert fragment.status_code == status
    assert fragment["HX-Retarget"] == "#upload-errors"
    assert says in text(fragment)
    assert "<html" not in text(fragment)
    assert documents(acme) == []


def test_every_bad_file_is_named_at_once(acme: World) -> None:
    response = upload(connor(acme), md("empty.md", b""), md(), txt("blank.txt", b""))
    assert response.status_code == 400
    page = text(response)
    assert "<li>“empty.md” is empty.</li>" in page
    assert "<li>“blank.txt” is empty.</li>" in page
    assert documents(acme) == []


def test_no_file_or_too_many_files_are_refused(acme: World) -> None:
    mine = connor(acme)
    nothing = mine.post(reverse("app-playbook-upload"), {"title": "Pricing"})
    assert nothing.status_code == 400
    assert "Choose a file to upload." in text(nothing)
    eleven = [md(f"part-{i}.md") for i in range(11)]
    too_many = upload(mine, *eleven)
    assert too_many.status_code == 400
    assert "Upload at most 10 files at a time." in text(too_many)
    assert documents(acme) == []


# --------------------------------------------------------------------------- reingest, delete


def ready_document(world: World) -> Document:
    with tenant_context(world.tenant):
        document = add_document(
            acting_user=world.consultant,
            upload=Upload("pricing.md", "text/markdown", PRICING, "0" * 64),
        )
        Document.objects.filter(id=document.id).update(
            status=Document.Status.READY, progress=100, chunk_count=1
        )
        return Document.objects.get(id=document.id)


def test_reingest_restarts_the_ingestion_and_is_audited(acme: World) -> None:
    document = ready_document(acme)
    mine = connor(acme)
    page = text(mine.get(reverse("app-playbook")))
    assert "Re-ingest" in row_of(page, document)
    assert '<span class="badge ok">Ready</span>' in row_of(page, document)
    assert "1 ready · 1 passage searchable" in page

    response = mine.post(reverse("app-document-reingest", args=[document.id]))
    assert response.status_code == 302
    assert "“pricing” is being ingested again." in text(mine.get(reverse("app-playbook")))
    [event] = audit_events(acme, "document.reingest_requested")
    assert (event.actor_id, event.resource_id) == (str(acme.consultant.pk), str(document.id))
    with tenant_context(acme.tenant):
        document.refresh_from_db()
    assert (document.status, document.progress) == (Document.Status.PENDING, 0)

    fragment = mine.post(reverse("app-document-reingest", args=[document.id]), headers=HTMX)
    assert fragment.status_code == 200
    row = text(fragment)
    assert row.strip().startswith(f'<tr id="document-{document.id}"')
    assert 'hx-trigger="every 1s"' in row  # polls again until it is ready
    assert len(audit_events(acme, "document.reingest_requested")) == 2


def test_delete_removes_the_document_and_is_audited(acme: World) -> None:
    document = ready_document(acme)
    other = ready_document(acme)
    mine = connor(acme)
    response = mine.post(reverse("app-document-delete", args=[document.id]))
    assert response.status_code == 302
    page = text(mine.get(reverse("app-playbook")))
    assert "“pricing” was deleted from your playbook." in page
    assert f'id="document-{document.id}"' not in page
    assert [d.id for d in documents(acme)] == [other.id]
    [event] = audit_events(acme, "document.deleted")
    assert (event.actor_id, event.resource_id) == (str(acme.consultant.pk), str(document.id))
    assert event.context == {"filename": "pricing.md", "chunks": 1}

    fragment = mine.post(reverse("app-document-delete", args=[other.id]), headers=HTMX)
    assert fragment.status_code == 200
    assert "Your playbook is empty" in text(fragment)
    assert documents(acme) == []
    assert len(audit_events(acme, "document.deleted")) == 2
    # Deleted means gone: its row and its actions are the 404 page now.
    assert mine.get(reverse("app-document-row", args=[other.id])).status_code == 404
    assert mine.post(reverse("app-document-reingest", args=[other.id])).status_code == 404


# --------------------------------------------------------------------------- to 100%


@pytest.fixture
def eager() -> Iterator[None]:
    conf = celery_app.conf
    previous = (conf.task_always_eager, conf.task_eager_propagates)
    conf.task_always_eager, conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        conf.task_always_eager, conf.task_eager_propagates = previous


def test_an_uploaded_document_is_ingested_and_its_row_reaches_100_percent(
    live_db: None, eager: None
) -> None:
    with platform_context():
        for plan, kind, name, config in PLAN_DEFAULTS.ROWS:
            PlanEntitlement.objects.update_or_create(
                plan=plan, kind=kind, name=name, defaults={"config": config}
            )
    world = build_world("acme")
    try:
        mine = connor(world)
        response = upload(mine, md(), html(), htmx=True)  # ingested once the upload commits
        assert response.status_code == 200
        for document in documents(world):
            assert document.status == Document.Status.READY, document.error
            row = text(mine.get(reverse("app-document-row", args=[document.id]), headers=HTMX))
            assert 'aria-valuetext="100%">100%</progress>' in row
            assert '<span class="badge ok">Ready</span>' in row
            assert "hx-trigger" not in row  # done: it stops polling
            with tenant_context(world.tenant):
                assert Chunk.objects.filter(document=document).count() == document.chunk_count > 0
        page = text(mine.get(reverse("app-playbook")))
        assert "2 ready ·" in page
    finally:
        forget_redis(world)
