"""A consultant uploads a playbook document and watches it being ingested."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.harness import login, screenshot


def write_playbook(path: Path, sections: int = 120) -> Path:
    """A long Markdown playbook: many passages, so ingestion takes a moment."""
    parts = ["# Onboarding a new client\n"]
    for n in range(1, sections + 1):
        parts.append(
            f"## Step {n}\n\nIn week {n} of the engagement, meet the client's leadership team, "
            f"agree three measurable outcomes for step {n}, and write down who owns each one. "
            "Review the outcomes at the end of the week and adjust the plan with the client.\n"
        )
    path.write_text("\n".join(parts))
    return path


def test_a_consultant_uploads_a_document_and_the_progress_bar_reaches_100(
    page: Page, tmp_path: Path
) -> None:
    document = write_playbook(tmp_path / "client-onboarding.md")
    login(page, "nick@northwind.demo")
    page.get_by_role("link", name="Playbook").click()
    expect(page.get_by_role("heading", name="Playbook", exact=True)).to_be_visible()

    page.get_by_label("Files").set_input_files(str(document))
    page.get_by_label("Title").fill("Onboarding a new client")
    page.get_by_role("button", name="Upload").click()

    expect(page.get_by_role("status")).to_contain_text("“Onboarding a new client” uploaded")
    bar = page.get_by_role("progressbar", name="Ingestion of Onboarding a new client")
    expect(bar).to_be_visible()
    seen = {bar.get_attribute("value")}
    row = page.locator("tr").filter(has=bar)
    # The row polls itself: its bar climbs until the document is ready.
    for _ in range(300):
        seen.add(bar.get_attribute("value"))
        if row.get_by_text("Ready").count():
            break
        page.wait_for_timeout(100)
    expect(bar).to_have_attribute("value", "100", timeout=30_000)
    expect(row.get_by_text("Ready", exact=True)).to_be_visible()
    expect(row).to_contain_text("100%")
    assert int(row.locator("td.num").inner_text()) > 10  # passages searchable
    assert seen <= {str(n) for n in range(101)}  # every value seen was a percentage
    screenshot(page, "playbook")

    # A file the agent cannot read is refused with a clear message, and nothing is stored.
    bad = tmp_path / "logo.exe"
    bad.write_bytes(b"MZ\x90\x00 not a document")
    page.get_by_label("Files").set_input_files(str(bad))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-errors")).to_contain_text("logo.exe")
    expect(page.get_by_role("progressbar", name="Ingestion of logo")).to_have_count(0)
