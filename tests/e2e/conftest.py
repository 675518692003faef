"""Browser tests: Playwright drives Debian's chromium against the real app.

Fixtures
    e2e_app   (session)  the app in real processes (gunicorn + a Celery worker) on a fresh,
                         migrated and seeded database; `.url`, `.web_log`, `.worker_log`, `.env`
    browser   (session)  chromium from /usr/bin/chromium (`make browser` installs it)
    page      (function) a new context (1280x800, base_url = the app) and page; its screenshot
                         is saved to tests/e2e/screenshots/<test name>.png after every test

Helpers (tests.e2e.harness): login, logout, screenshot, manage, wait_for_agent_runs.

Every test here is marked `e2e` and runs after the rest of the suite: while Playwright is
started its event loop runs in the test thread, where Django's ORM refuses to work.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.e2e.harness import (
    CHROMIUM_ARGS,
    E2EApp,
    require_chromium,
    screenshot,
    start_app,
    stop_app,
)

E2E_DIR = Path(__file__).resolve().parent
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_itemcollected(item: pytest.Item) -> None:
    if E2E_DIR in item.path.parents:
        item.add_marker(pytest.mark.e2e)  # before `-m` selects


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Browser tests last: the rest of the suite uses the ORM in the test thread.
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def e2e_app(request: pytest.FixtureRequest) -> Iterator[E2EApp]:
    problem = ""
    try:
        require_chromium()
        app = start_app()
    except RuntimeError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)
    failures_before = request.session.testsfailed
    try:
        yield app
    finally:
        stop_app(app)
        if request.session.testsfailed > failures_before:
            print(f"\nThe e2e app's logs are kept in {app.log_dir}")
        else:
            shutil.rmtree(app.log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def browser(e2e_app: E2EApp) -> Iterator[Browser]:
    executable = require_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, e2e_app: E2EApp, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=e2e_app.url)
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console error: {message.text}")

    def on_response(response: Response) -> None:
        failed_resource = response.status >= 400 and response.request.resource_type != "document"
        if response.status >= 500 or failed_resource:
            problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    page.on("console", on_console)
    page.on("response", on_response)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    try:
        yield page
    finally:
        try:
            screenshot(page, request.node.name)
        except PlaywrightError as exc:
            print(f"No screenshot for {request.node.name}: {exc}")
        reports = request.node.stash.get(REPORTS, {})
        if any(report.failed for report in reports.values()):
            print(f"Page at failure: {page.url}")
            print("\n".join(problems) or "No console errors, page errors or server errors.")
            print(f"End of the web server's log ({e2e_app.web_log}):\n{e2e_app.log_tail('web')}")
            print(f"All the app's logs (kept after a failure): {e2e_app.log_dir}")
        context.close()
