"""The analysis report opens in headless Chromium as one self-contained page: every section
and inline figure is there, nothing is fetched, and a team named like a script stays text."""

from __future__ import annotations

import shutil
from pathlib import Path

from server.analysis.report import render
from tests.conftest import need
from tests.e2e.test_web import CHROMIUM
from tests.unit.analysis.test_report import EVIL, toy_analysis


def test_report_opens_in_chromium(tmp_path: Path) -> None:
    need(shutil.which("chromium") is not None, "Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    page_file = render(toy_analysis(), tmp_path / "report")
    requests: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(page_file.as_uri())
            expect(page.locator("h1")).to_contain_text("Toy challenge (toy): results")
            for heading in (
                "Data",
                "Metric and ranking method",
                "Leaderboard with confidence intervals",
                "Rank uncertainty",
                "Significance map",
                "Robustness of the ranking",
                "ROC curves with bootstrap bands",
                "Failures by reason",
            ):
                expect(page.get_by_role("heading", name=heading).first).to_be_visible()
            expect(page.get_by_role("heading", name="Consensus over tasks")).to_be_visible()
            assert page.locator("figure svg").count() >= 10
            box = page.locator("figure svg").first.bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 50
            expect(page.locator("table").first).to_contain_text("test")
            expect(page.locator("body")).to_contain_text(EVIL)  # shown as text, not run
        finally:
            browser.close()
    assert dialogs == []
    assert requests == [page_file.as_uri()]  # self-contained: nothing else is loaded
