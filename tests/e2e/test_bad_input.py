"""Bad input seen from the browser: a question holding a NUL (pasted from a PDF, say) is
refused with a toast that says what to change, and the question stays in the box."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.e2e.harness import E2EApp, login, screenshot

QUESTION = "How do I prepare\u0000 my first board meeting?"


def test_a_question_with_a_nul_is_refused_with_a_clear_toast_and_kept(
    page: Page, e2e_app: E2EApp
) -> None:
    login(page, "cara@northwind.demo")
    for name, size in (("desktop", (1440, 900)), ("phone", (390, 844))):
        page.set_viewport_size({"width": size[0], "height": size[1]})
        page.goto("/chat/")
        box = page.get_by_label("Your question")
        box.fill("placeholder")
        box.evaluate("(element, text) => { element.value = text; }", QUESTION)
        with page.expect_response(lambda r: r.url.endswith("/chat/new")) as answer:
            page.get_by_role("button", name="Ask").click()
        assert answer.value.status == 400
        toast = page.locator("#toasts").get_by_text(
            "“question” contains a character that cannot be saved (a NUL or a broken "
            "Unicode character). Remove it and try again. Nothing was saved."
        )
        expect(toast).to_be_visible()
        # Only the server's toast, not the generic "Something went wrong".
        expect(page.locator("#toasts").get_by_text("Something went wrong")).to_have_count(0)
        assert box.input_value() == QUESTION  # nothing the client typed is lost
        screenshot(page, f"bad-input-toast-{name}", full_page=False)
