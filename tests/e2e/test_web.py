"""The participant page in headless Chromium: sign in with a token, read the phase's rules
and leaderboard, upload an image archive in chunks and watch the submission appear."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from server.app import create_app
from server.config import Settings
from tests.conftest import need
from tests.support.factories import (
    apply_bundle,
    stoic_bundle,
    stoic_cases,
    user_token,
    write_dataset,
)
from tests.support.workers import free_port

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def site(settings: Settings, sent_tasks: list[object], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_participant_page(site: str, settings: Settings, tmp_path: Path) -> None:
    need(shutil.which("chromium") is not None, "Debian's chromium")
    from fastapi.testclient import TestClient
    from playwright.sync_api import expect, sync_playwright

    admin = user_token(settings, "admin", admin=True)
    with TestClient(create_app(settings)) as api:
        bundle = stoic_bundle(rules={"max_submissions": 1})
        r = apply_bundle(api, admin, bundle, {"test": write_dataset(tmp_path / "t", stoic_cases())})
        assert r.status_code == 200
    alice = user_token(settings, "alice")
    archive = tmp_path / "algo.tar"
    archive.write_bytes(b"\0" * (9 * 1024 * 1024 + 123))  # two chunks

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        page = browser.new_page()
        page.goto(site + "/")
        page.fill("#token", alice)
        page.click("#login button")
        expect(page.locator("#me")).to_have_text("signed in as alice")
        page.get_by_role("button", name="STOIC-style test challenge").click()
        expect(page.locator("#rules")).to_contain_text("at most 1 submission(s) per 24 h")
        expect(page.locator("#leaderboard")).to_contain_text("no scored submissions yet")

        page.set_input_files("#archive", str(archive))
        page.click("#submit-form button")
        expect(page.locator("#message")).to_contain_text("accepted: validating", timeout=20_000)
        expect(page.locator("#submissions tbody tr")).to_have_count(1)
        expect(page.locator("#submissions tbody")).to_contain_text("validating")
        expect(page.locator("#submissions tbody")).to_contain_text("position 1 on build")

        # The limit is reached: the page shows the refusal with the rule's next time.
        page.set_input_files("#archive", str(archive))
        page.click("#submit-form button")
        expect(page.locator("#message")).to_contain_text("Refused: your team has made 1 of 1")
        expect(page.locator("#message")).to_contain_text("Next submission allowed at")
        expect(page.locator("#message")).to_contain_text("[rule: max_submissions]")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
