"""Driving Conveyor's decision pages in a real browser (Playwright, Debian's chromium).

Shared by the browser tests (against a test api-server) and the e2e tests (against the
Airflow that `make up` started): every helper takes the Airflow base URL it works on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Playwright's default of 30 s hides a broken page for long; the pages answer in well under a second.
TIMEOUT_MS = 10_000


@contextmanager
def chromium(executable: str = CHROMIUM) -> Iterator[Browser]:
    """A headless chromium (the system's: Playwright downloads no browsers here)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def login(page: Page, base_url: str, user: str, password: str, next_path: str = "/conveyor/gates") -> None:
    """Sign in through the simple auth manager's login page, as a person does; ends on ``next_path``."""
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{base_url}/auth/login?next={quote(next_path)}")
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Sign in").click()
    # The login page's own URL carries next_path in its query: wait for the path itself.
    target = next_path.split("?")[0]
    page.wait_for_url(lambda url: urlsplit(url).path == target)
    page.wait_for_load_state()


def gate_path(dag_id: str, run_id: str, gate: str = "approve") -> str:
    return "/conveyor/gates/" + "/".join(quote(part, safe="") for part in (dag_id, run_id, gate))


def open_gates(page: Page, base_url: str) -> Locator:
    """The list of waiting gates; returns the section holding them once it has loaded."""
    page.goto(f"{base_url}/conveyor/gates")
    gates = page.locator("#gates")
    expect(gates.get_by_text("Loading…")).to_have_count(0, timeout=TIMEOUT_MS)
    return gates


def open_gate(page: Page, base_url: str, dag_id: str, run_id: str, gate: str = "approve") -> Locator:
    """One gate's decision page; returns the gate's card once it has loaded."""
    page.goto(base_url + gate_path(dag_id, run_id, gate))
    return gate_card(page, dag_id, run_id, gate)


def gate_card(page: Page, dag_id: str, run_id: str, gate: str = "approve") -> Locator:
    card = page.locator(f'article.gate[data-gate="{dag_id}/{run_id}/{gate}"]')
    expect(card).to_be_visible(timeout=TIMEOUT_MS)
    return card


def approve(card: Locator, comment: str = "") -> Locator:
    """Click Approve on a gate's card (with an optional comment); returns the result message the page shows."""
    gate = card.get_attribute("data-gate")
    if comment:
        card.get_by_label("Comment on your approval").fill(comment)
    card.get_by_role("button", name="Approve").click()
    return _result(card.page, gate)


def reject(card: Locator, reason: str) -> Locator:
    """Reject with a reason (the page asks for one); returns the result message the page shows."""
    gate = card.get_attribute("data-gate")
    card.get_by_role("button", name="Reject", exact=True).click()
    card.get_by_label("Reason for rejecting").fill(reason)
    card.get_by_role("button", name="Confirm reject").click()
    return _result(card.page, gate)


def _result(page: Page, gate: str | None) -> Locator:
    # A recorded decision replaces the card with a fresh one; the message is in whichever is shown.
    message = page.locator(f'article.gate[data-gate="{gate}"] .result .notice:not(.info)')
    expect(message).to_be_visible(timeout=TIMEOUT_MS)
    return message
