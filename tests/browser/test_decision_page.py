"""The decision page in a real browser: what approvers and others see, and deciding through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api.conftest import COMMIT, DIGEST, Run
from tests.support import browser as ui

pytestmark = [pytest.mark.airflow, pytest.mark.browser]


def test_approver_sees_the_build_and_approves_it(
    page_as: Callable[..., Page], api_server: str, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    page = page_as("bob")
    card = ui.open_gate(page, api_server, run.dag_id, run.run_id)
    expect(card.locator('[data-fact="Environment"]')).to_have_text("dev")
    expect(card.locator('[data-fact="Version"]')).to_contain_text("v1.0.0")
    expect(card.locator('[data-fact="Commit"]')).to_contain_text("Add booking API")
    expect(card.locator('[data-fact="Commit"]')).to_contain_text("Dev <dev@example.com>")
    expect(card.locator('[data-fact="Commit"] code')).to_have_attribute("title", COMMIT)
    expect(card.locator('[data-fact="Image digest"]')).to_have_text(DIGEST)
    message = ui.approve(card, comment="checked the booking migration on staging")
    expect(message).to_contain_text("Your approval is recorded. The gate is approved (1 of 1 approvals).")
    card = ui.gate_card(page, run.dag_id, run.run_id)
    expect(card.locator('.decisions li[data-user="bob"]')).to_contain_text("approved by bob")
    expect(card.locator('.decisions li[data-user="bob"]')).to_contain_text("checked the booking migration on staging")
    expect(card.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.locator('#history tr[data-user="bob"]')).to_contain_text("recorded")
    expect(page.locator('#history tr[data-user="bob"]')).to_contain_text("checked the booking migration on staging")


def test_reject_needs_a_reason_and_says_so(
    page_as: Callable[..., Page], api_server: str, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    page = page_as("alice")
    card = ui.open_gate(page, api_server, run.dag_id, run.run_id)
    refused = ui.reject(card, "   ")
    expect(refused).to_have_text("A reject needs a reason: say what must change before this build may be released.")
    message = ui.reject(card, "the <b>migration</b> is missing")
    expect(message).to_contain_text("Your rejection is recorded. The gate is rejected")
    card = ui.gate_card(page, run.dag_id, run.run_id)
    expect(card.locator(".card > header .badge, header .badge").first).to_have_text("rejected")
    # Shown as text, never as markup.
    expect(card.locator('.decisions li[data-user="alice"] .reason')).to_have_text("the <b>migration</b> is missing")
    expect(card.locator(".reason b")).to_have_count(0)


def test_non_approver_sees_the_gate_without_buttons_and_why(
    page_as: Callable[..., Page], api_server: str, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    page = page_as("carol")
    gates = ui.open_gates(page, api_server)
    card = ui.gate_card(page, run.dag_id, run.run_id)
    expect(card.locator('[data-fact="Commit"]')).to_contain_text("Add booking API")
    expect(card.get_by_role("button")).to_have_count(0)
    expect(card.locator(".decide")).to_contain_text("carol is not an approver of this gate")
    expect(gates.get_by_text("Waiting for others")).to_be_visible()


def test_the_approvals_entry_in_the_airflow_ui_leads_to_the_page(
    page_as: Callable[..., Page], api_server: str, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    page = page_as("bob", next_path="/")
    page.get_by_role("link", name="Approvals").click()
    page.wait_for_url("**/plugin/approvals**")
    frame = page.frame_locator('iframe[title="Approvals"]')
    expect(frame.get_by_role("heading", name="Approvals", exact=True)).to_be_visible()
    expect(frame.locator(f'article.gate[data-gate="{run.dag_id}/{run.run_id}/approve"]')).to_be_visible()


def test_the_page_is_not_served_without_a_session(api_server: str, waiting_gate: Callable[..., Run]) -> None:
    run = waiting_gate()
    for path in ("/conveyor/gates", ui.gate_path(run.dag_id, run.run_id)):
        anonymous = httpx.get(api_server + path)
        assert anonymous.status_code == 401 and run.commit not in anonymous.text
        browser_like = httpx.get(api_server + path, headers={"Accept": "text/html"})
        assert browser_like.status_code == 303
        assert browser_like.headers["location"].startswith("/auth/login?next=")
    forged = httpx.get(api_server + "/conveyor/gates", cookies={"_token": "not-a-token"})
    assert forged.status_code == 401


def test_opening_a_gate_link_signed_out_asks_to_sign_in_and_comes_back(
    chromium: Any, api_server: str, waiting_gate: Callable[..., Run]
) -> None:
    run = waiting_gate()
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(ui.TIMEOUT_MS)
        page.goto(api_server + ui.gate_path(run.dag_id, run.run_id))
        page.wait_for_url("**/auth/login?next=**")
        page.locator("input[name=username]").fill("bob")
        page.locator("input[name=password]").fill("bob-pw")
        page.get_by_role("button", name="Sign in").click()
        ui.gate_card(page, run.dag_id, run.run_id)
    finally:
        context.close()
