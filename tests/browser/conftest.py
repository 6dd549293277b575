"""Fixtures for the decision pages in a real browser, against the real api-server of tests/api."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.api import conftest as api_fixtures
from tests.conftest import PASSWORDS
from tests.support import browser as ui

# The pages answer in well under a second; 10 s leaves room for a loaded CI machine.
expect.set_options(timeout=ui.TIMEOUT_MS)

# The API suite's fixtures, on the same api-server (it is started once per test process).
api_server = api_fixtures.api_server
api = api_fixtures.api
auth = api_fixtures.auth
waiting_gate = api_fixtures.waiting_gate


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    with ui.chromium() as browser:
        yield browser


@pytest.fixture
def page_as(chromium: Browser, api_server: str) -> Iterator[Callable[..., Page]]:
    """A fresh browser session signed in as the given user through Airflow's login page."""
    contexts: list[Any] = []

    def open_as(user: str, next_path: str = "/conveyor/gates") -> Page:
        context = chromium.new_context()
        contexts.append(context)
        page = context.new_page()
        ui.login(page, api_server, user, PASSWORDS[user], next_path)
        return page

    yield open_as
    for context in contexts:
        context.close()
