"""The web application in headless Chromium, on a live server: a participant signs in,
walks challenge -> phase, submits, follows the submission to a score, opens the plots (the
values they draw are the statistics endpoint's), reloads on deep links and finds no Submit
on a closed phase; an organizer sees every team's submissions, reviews and releases a held
log (with a redaction) and re-evaluates. Every page passes axe-core with no violation, fits
375 px without horizontal scroll, and the journey works with the keyboard alone. The API
docs render from local files with an Authorize button. Screenshots go to
$HELDOUT_SCREENSHOTS (or the test's tmp dir).

Submissions are driven through the worker's own recording path (tests/support/scoring.py):
no containers, the platform's transitions, jobs, logs and results."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from tests.conftest import REDIS_URL, _sqlite_settings, need
from tests.support import images
from tests.support.factories import (
    apply_bundle,
    auth,
    stoic_bundle,
    stoic_cases,
    submit_blob,
    user_token,
    write_dataset,
)
from tests.support.scoring import fail_by_platform, fail_evaluation, run_algorithm, score
from tests.support.workers import ROOT, celery_worker, free_port

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
AXE = ROOT / "tests" / "e2e" / "web" / "node_modules" / "axe-core" / "axe.min.js"
SECRET = "patient-P004-secret"
N_CASES = 24
BASE = "/api/v1/challenges/stoic/phases/qualification"


@pytest.fixture
def web_settings(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # One database is enough here: the API's tests cover SQLite and PostgreSQL alike.
    return _sqlite_settings(tmp_path, tmp_path_factory)


@pytest.fixture
def site(web_settings: Settings, sent_tasks: list[object]) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(web_settings), host="127.0.0.1", port=port, log_level="warning")
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


def _outputs(seed: int, skill: float) -> dict[str, dict[str, Any]]:
    rng = random.Random(seed)
    out = {}
    for name, labels in stoic_cases(N_CASES).items():

        def noisy(y: int) -> float:
            return (skill * y + rng.random()) / (1 + skill)  # overlapping classes

        out[name] = {
            "probability-covid-19": noisy(labels["probCOVID"]),
            "probability-severe-covid-19": noisy(labels["probSevere"]),
        }
    return out


def _challenge(settings: Settings, tmp_path: Path) -> tuple[str, str]:
    """The challenge (open, closed and invite-only phases), bob's scored submission and his
    invitation of alice into his team; returns the organizer's and alice's tokens."""
    admin = user_token(settings, "admin", admin=True)
    alice = user_token(settings, "alice")
    # The organizer reviews successful runs' held logs too (the journey releases them).
    bundle = stoic_bundle(
        rules={"max_submissions": 2}, extra_phase={"review_successful_logs": True}
    )
    closed = dict(bundle["phases"][0])
    past = datetime.now(UTC) - timedelta(days=1)
    closed.update(
        slug="closed",
        title="Closed phase",
        opens_at=(past - timedelta(days=9)).isoformat(),
        closes_at=past.isoformat(),
    )
    final = dict(bundle["phases"][0])
    final.update(slug="final", title="Final", rules={"invite_only": True})
    bundle["phases"] += [closed, final]
    with TestClient(create_app(settings)) as api:
        ds = write_dataset(tmp_path / "t", stoic_cases(N_CASES))
        r = apply_bundle(api, admin, bundle, {"test": ds})
        assert r.status_code == 200, r.text
        # Another team, already scored, so the board has pairs to compare.
        bob = user_token(settings, "bob")
        r = submit_blob(api, bob)
        assert r.status_code == 201, r.text
        score(settings, r.json()["id"], _outputs(1, 0.4), tmp_path / "bob")
        team = api.get("/api/v1/challenges/stoic/teams/mine", headers=auth(bob)).json()
        r = api.post(
            f"/api/v1/teams/{team['id']}/invitations", json={"username": "alice"}, headers=auth(bob)
        )
        assert r.status_code == 201, r.text
        # And a third whose run the platform lost: failed, not charged.
        r = submit_blob(api, user_token(settings, "carol"))
        assert r.status_code == 201, r.text
        fail_by_platform(settings, r.json()["id"])
        assert (
            api.get(f"/api/v1/submissions/{r.json()['id']}", headers=auth(admin)).json()[
                "failure_code"
            ]
            == "platform_error"
        )
        # And a fourth whose evaluation the organizers' configuration broke: they are told.
        r = submit_blob(api, user_token(settings, "dave"))
        assert r.status_code == 201, r.text
        run_algorithm(settings, r.json()["id"], _outputs(3, 0.5))
        fail_evaluation(settings, r.json()["id"], "evaluation_config_error", "no such label")
    return admin, alice


class Checks:
    """axe-core, the 375 px width and a screenshot, for every page the journey opens."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.pages: list[str] = []

    def __call__(self, page: Any, name: str) -> None:
        page.wait_for_load_state("networkidle")
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("async () => (await axe.run(document)).violations")
        problems = [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3]) for v in result]
        assert problems == [], f"axe on {name}: {problems}"
        page.screenshot(path=str(self.out / f"{name}.png"), full_page=True)
        page.set_viewport_size({"width": 375, "height": 800})
        page.wait_for_timeout(300)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{name} is {width} px wide at 375 px"
        page.screenshot(path=str(self.out / f"{name}-375.png"), full_page=True)
        page.set_viewport_size({"width": 1200, "height": 900})
        self.pages.append(name)


def _tab_to(page: Any, text: str, limit: int = 80) -> None:
    """Press Tab until the focused element's text or label contains `text`."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        got = page.evaluate(
            "() => { const e = document.activeElement;"
            " return (e.getAttribute('aria-label') || e.textContent || '').trim(); }"
        )
        if text in got:
            return
    raise AssertionError(f"Tab never reached {text!r}")


def _view_data(page: Any, view: str, name: str) -> list[dict[str, Any]]:
    return list(page.evaluate(f"() => window.heldoutViews.{view}.data('{name}')"))


def test_participant_and_organizer_journeys(
    site: str, web_settings: Settings, tmp_path: Path
) -> None:
    need(shutil.which("chromium") is not None, "Debian's chromium")
    need(AXE.exists(), "axe-core (cd tests/e2e/web && npm ci)")
    from playwright.sync_api import expect, sync_playwright

    settings = web_settings
    admin, alice = _challenge(settings, tmp_path)
    archive = tmp_path / "algo.tar"
    archive.write_bytes(b"\0" * (9 * 1024 * 1024 + 123))  # two chunks
    check = Checks(Path(os.environ.get("HELDOUT_SCREENSHOTS") or tmp_path / "screens"))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        # Offline: anything but this server is refused, so a CDN reference would break it.
        external: list[str] = []

        def gate(route: Any) -> None:
            if route.request.url.startswith(site):
                route.continue_()
            else:
                external.append(route.request.url)
                route.abort()

        context.route("**/*", gate)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # -- Participant, keyboard only: sign in, challenge, phase.
        page.goto(site + "/")
        expect(page.locator("h1")).to_have_text("Sign in")
        check(page, "01-sign-in")
        _tab_to(page, "Skip to content")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")  # the brand link, then the token field
        page.keyboard.type(alice)
        page.keyboard.press("Enter")
        expect(page.locator("#me")).to_have_text("signed in as alice")
        expect(page.locator("#challenges")).to_be_visible()
        check(page, "02-challenges")
        _tab_to(page, "STOIC-style test challenge")
        page.keyboard.press("Enter")
        expect(page).to_have_url(site + "/#/c/stoic")
        expect(page.locator("#phases")).to_contain_text("closed")
        check(page, "03-challenge")
        # The final phase is for invited teams: ask to take part.
        page.fill("#join-message", "we would like to enter the final")
        page.click("#join-form button")
        expect(page.locator("#join-status")).to_contain_text("Your request to join is pending")
        page.reload()
        expect(page.locator("#join-status")).to_contain_text("pending")
        expect(page.locator("#join-form")).to_have_count(0)
        _tab_to(page, "Qualification")
        page.keyboard.press("Enter")
        expect(page).to_have_url(site + "/#/c/stoic/p/qualification")
        expect(page.locator("#phase-slug")).to_have_text("qualification")
        expect(page.locator("#dates")).to_contain_text("no closing date")
        expect(page.locator("#rules")).to_contain_text("at most 2 submission(s) per 24 h")
        expect(page.locator("#usage")).to_contain_text("0 of 2 used")
        expect(page.locator("#leaderboard tr[data-submission]")).to_have_count(1)  # bob's

        # -- Submit: upload in two chunks, follow the link to the submission page.
        page.set_input_files("#archive", str(archive))
        page.click("#submit-form button")
        expect(page.locator("#message")).to_contain_text("accepted: validating", timeout=20_000)
        expect(page.locator("#usage")).to_contain_text("1 of 2 used")
        mine = page.locator("#submissions tbody tr[data-id]")
        expect(mine).to_have_count(1)  # only alice's team
        sid = int(mine.first.get_attribute("data-id") or 0)
        check(page, "04-phase")
        _tab_to(page, f"#{sid}")
        page.keyboard.press("Enter")
        expect(page).to_have_url(f"{site}/#/s/{sid}")
        expect(page.locator("#sub-status")).to_have_text("validating")
        expect(page.locator("#sub-queue")).to_contain_text("position 1 on build")
        expect(page.locator("#timeline li")).to_have_count(2)
        check(page, "05-submission-validating")

        # The platform runs it (the infer runs print a private case id); the page follows.
        score(settings, sid, _outputs(2, 0.9), tmp_path / "alice", log=f"reading {SECRET}\n")
        expect(page.locator("#sub-status")).to_have_text("succeeded", timeout=15_000)
        page.reload()  # a deep link survives reload
        expect(page.locator("#sub-status")).to_have_text("succeeded")
        expect(page.locator("#steps")).to_contain_text("infer")
        page.click("#jobs-box summary")
        page.locator("#jobs tr", has_text="infer").first.locator("button").click()
        expect(page.locator("#logs")).to_contain_text("held until an organizer reviews")
        check(page, "06-submission-succeeded")

        # -- Leaderboard and plots: what the charts hold is what the API computed.
        page.goto(f"{site}/#/c/stoic/p/qualification")
        page.reload()
        expect(page.locator("#leaderboard tr[data-submission]")).to_have_count(2)
        expect(page.locator("#ensemble-row")).to_contain_text("Ensemble (")
        page.wait_for_function("() => window.heldoutViews && window.heldoutViews.pvalues")
        with TestClient(create_app(settings)) as api:
            stats = api.get(f"{BASE}/leaderboard/statistics", headers=auth(alice)).json()
            board = api.get(f"{BASE}/leaderboard", headers=auth(alice)).json()
        forest = _view_data(page, "forest", "forest")
        assert [(r["team"], r["value"], r["lower"], r["upper"]) for r in forest] == [
            (e["team"], e["value"], e["ci"][0], e["ci"][1]) for e in board["entries"]
        ]
        roc = _view_data(page, "roc", "roc")
        for key, team in zip(stats["submissions"], stats["teams"], strict=True):
            curve = stats["roc"][str(key)]
            drawn = [r for r in roc if r["submission"] == key]
            assert [r["fpr"] for r in drawn] == curve["fpr"], team
            assert [r["tpr"] for r in drawn] == curve["tpr"], team
            assert [r["lower"] for r in drawn] == curve["tpr_lower"], team
        pv = _view_data(page, "pvalues", "pvalues")
        n = len(stats["teams"])
        assert len(pv) == n * (n - 1)
        for r in pv:
            i, j = stats["teams"].index(r["a"]), stats["teams"].index(r["b"])
            assert r["p"] == stats["p_values"][i][j]
        assert page.locator("#plot-roc svg path").count() >= 2 * n  # a band and a line each
        assert page.locator("#plot-pvalues svg path").count() >= n * (n - 1)
        assert page.locator("#plot-forest svg path").count() >= n
        expect(page.locator("#ranking-rule")).to_contain_text("DeLong")
        for e in board["entries"]:  # a tie names its group's leader and the p-value
            if e["tied_with_leader"]:
                row = page.locator(f"#leaderboard tr[data-submission='{e['submission_id']}']")
                row.locator("summary").click()
                expect(row).to_contain_text(f"DeLong p = {e['p_vs_rank_leader']:.3f}")
        check(page, "07-phase-plots")

        # -- A closed phase: no Submit, and its own (empty) board even after a fast switch.
        # The old page's race: the qualification's answers arrive late, after the switch.
        page.evaluate(
            """() => { const real = window.fetch; window.fetch = async (url, opts) => {
                 const r = await real(url, opts);
                 if (String(url).includes('/phases/qualification')) {
                   await new Promise((ok) => setTimeout(ok, 1500)); }
                 return r; }; }"""
        )
        page.evaluate("() => { location.hash = '#/c/stoic'; }")
        expect(page.locator("#phases")).to_be_visible()
        page.evaluate("() => { location.hash = '#/c/stoic/p/qualification'; }")
        page.wait_for_timeout(200)
        page.evaluate("() => { location.hash = '#/c/stoic/p/closed'; }")
        page.wait_for_timeout(2500)
        expect(page.locator("h1")).to_have_text("Closed phase")
        expect(page.locator("#phase-slug")).to_have_text("closed")
        expect(page.locator("#no-submit")).to_contain_text("phase closed at")
        expect(page.locator("#submit-form")).to_have_count(0)
        expect(page.locator("#leaderboard")).to_contain_text("no scored submissions yet")
        page.wait_for_timeout(3500)  # past a refresh of the page left behind
        expect(page.locator("#leaderboard")).to_contain_text("no scored submissions yet")
        expect(page.locator("#message")).to_have_text("")
        check(page, "08-closed-phase")
        page.goto(f"{site}/#/c/stoic/p/final")
        expect(page.locator("#no-submit")).to_contain_text("invited teams only")
        page.goto(f"{site}/#/c/stoic/team")
        expect(page.locator("#members")).to_contain_text("alice")
        # Bob's invitation: accepting is refused (alice's team has submitted), shown in place.
        page.get_by_role("button", name="Accept invitation to bob").click()
        expect(page.locator(".invitations .result.error")).to_contain_text("submitted")
        page.get_by_role("button", name="Decline invitation to bob").click()
        expect(page.locator("main")).to_contain_text("none pending")
        check(page, "09-team")

        # -- Organizer: every team's submissions, the held log, re-evaluation.
        page.click("#signout")
        expect(page.locator("h1")).to_have_text("Sign in")
        page.fill("#token", admin)
        page.keyboard.press("Enter")
        expect(page.locator("#me")).to_have_text("signed in as admin")
        page.goto(f"{site}/#/c/stoic/organize")
        page.reload()
        table = page.locator("#all-submissions")
        expect(table.locator("tbody tr")).to_have_count(4)
        expect(table.locator("thead")).to_contain_text("team")
        for team in ("alice", "bob", "carol", "dave"):
            expect(table).to_contain_text(team)
        platform = table.locator("tr.platform")
        expect(platform).to_have_count(2)
        expect(platform.filter(has_text="carol")).to_contain_text("platform_error")
        expect(platform.filter(has_text="dave")).to_contain_text("evaluation_config_error")
        expect(platform.first).to_contain_text("platform/evaluation")
        expect(platform.first).to_contain_text("not counted")
        expect(page.locator("#events")).to_contain_text("evaluation_config_error")
        expect(page.locator("#events")).to_contain_text("no such label")
        page.select_option("#filter-reason", "platform_error")
        expect(table.locator("tbody tr")).to_have_count(1)
        page.select_option("#filter-reason", "")
        page.select_option("#filter-state", "succeeded")
        expect(table.locator("tbody tr")).to_have_count(2)
        held = f"section.review[aria-label='Held logs of submission {sid}']"
        review = page.locator(held)
        expect(review).to_be_visible()
        check(page, "10-organize")
        expect(review).to_contain_text("held logs, 1 step")  # one entry per step, not per case
        review.locator("button", has_text="Read").first.click()
        expect(page.locator("#review-log")).to_contain_text(SECRET)
        page.fill(f"#redact-{sid}", SECRET)
        review.locator("button", has_text="Release all").click()  # 24 inference logs
        expect(page.locator(held)).to_have_count(0)
        expect(page.locator("#reviews")).to_contain_text("no logs wait for review")
        requests = page.locator("#join-requests")
        expect(requests).to_contain_text("alice")
        expect(requests).to_contain_text("we would like to enter the final")
        page.locator("#o-join").scroll_into_view_if_needed()
        page.locator("#filter-reason").focus()  # the keyboard from here: Tab to Approve
        _tab_to(page, "Approve join request of alice")
        page.keyboard.press("Enter")
        expect(page.locator("main")).to_contain_text("no pending join requests")
        page.fill("#invite-final", "bob")
        page.get_by_role("button", name="Invite to Final").click()
        expect(page.locator("#o-ph ~ section", has_text="Final")).to_contain_text(
            "team bob may now submit to Final"
        )
        page.click("#reevaluate-qualification")
        expect(page.locator("#reevaluate-qualification + .result")).to_contain_text("queued:")

        # The participant now reads the released log, redacted.
        page.click("#signout")
        page.fill("#token", alice)
        page.keyboard.press("Enter")
        expect(page.locator("#me")).to_have_text("signed in as alice")
        page.goto(f"{site}/#/s/{sid}")
        page.reload()
        page.click("#jobs-box summary")
        page.locator("#jobs tr", has_text="infer").first.locator("button").click()
        expect(page.locator("#logs pre")).to_contain_text("[redacted]")
        expect(page.locator("#logs pre")).not_to_contain_text(SECRET)
        # Approved: the team may now submit to the final.
        page.goto(f"{site}/#/c/stoic/p/final")
        expect(page.locator("#submit-form")).to_be_visible()
        expect(page.locator("#no-submit")).to_have_count(0)
        # The organizer page is the organizers' only.
        page.goto(f"{site}/#/c/stoic/organize")
        expect(page.locator("main")).to_contain_text("only this challenge's organizers")

        # -- API docs from local files, with the token scheme behind Authorize.
        page.goto(f"{site}/api/v1/docs")
        expect(page.locator(".swagger-ui .info")).to_contain_text("heldout")
        expect(page.locator("button.authorize")).to_be_visible()
        check(page, "11-api-docs")  # axe, 375 px and screenshots, as for the app's pages
        # Authorize with a token, then "Try it out" on GET /me sends it.
        page.click("button.authorize")
        # Two schemes since node tokens: the user's bearer token, and the node-only key.
        bearer = page.locator(".modal-ux form").filter(has_text="token (http, Bearer)")
        bearer.locator("input").first.fill(alice)
        bearer.locator("button.authorize").click()
        page.locator(".modal-ux button.btn-done").first.click()
        page.locator("#operations-accounts-me_api_v1_me_get .opblock-summary").click()
        page.locator("#operations-accounts-me_api_v1_me_get button.try-out__btn").click()
        page.locator("#operations-accounts-me_api_v1_me_get button.execute").click()
        expect(
            page.locator("#operations-accounts-me_api_v1_me_get .live-responses-table")
        ).to_contain_text('"username": "alice"')

        assert external == [], f"requests outside the server: {external}"
        assert errors == [], errors
        browser.close()
    assert len(check.pages) == 11  # ten app pages and the API docs


@pytest.fixture
def live_site(pg_settings: Settings) -> Iterator[tuple[str, Settings]]:
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    need(images.client_or_none() is not None, "a Docker engine")
    settings = pg_settings.model_copy(update={"heartbeat_s": 1})
    redis.Redis.from_url(settings.broker_url).flushdb()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", settings
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.docker
@pytest.mark.redis
def test_browser_follows_a_real_worker(live_site: tuple[str, Settings], tmp_path: Path) -> None:
    """The same page on a live server and a real Celery worker with the Docker engine: an
    image uploaded in the browser is validated, run and scored, and the page shows it."""
    need(shutil.which("chromium") is not None, "Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    site, settings = live_site
    client = images.client_or_none()
    assert client is not None
    admin = user_token(settings, "admin", admin=True)
    alice = user_token(settings, "alice")
    cases = images.write_ct_dataset(
        tmp_path / "test",
        ((f"P{i:03d}", 30 + 9 * i, int(i % 2 == 0), int(i % 4 == 0)) for i in range(4)),
    )
    with TestClient(create_app(settings)) as api:
        r = apply_bundle(api, admin, stoic_bundle(limits={"wall_time_s": 60}), {"test": cases})
        assert r.status_code == 200, r.text
    tag = images.build_image(client, "web-good", images.WELL_BEHAVED)
    archive = images.save_image(client, [tag], tmp_path / "good.tar")

    with celery_worker(settings), sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        page = browser.new_page()
        page.goto(site + "/")
        page.fill("#token", alice)
        page.keyboard.press("Enter")
        expect(page.locator("#me")).to_have_text("signed in as alice")
        page.goto(f"{site}/#/c/stoic/p/qualification")
        page.set_input_files("#archive", str(archive))
        page.click("#submit-form button")
        expect(page.locator("#message")).to_contain_text("accepted", timeout=60_000)
        page.click("#message a")
        expect(page.locator("#sub-status")).to_have_text("succeeded", timeout=300_000)
        expect(page.locator("#timeline")).to_contain_text("evaluating")
        page.goto(f"{site}/#/c/stoic/p/qualification")
        expect(page.locator("#leaderboard tr[data-submission]")).to_have_count(1)
        expect(page.locator("#leaderboard tr[data-submission]")).to_contain_text("alice")
        page.wait_for_function("() => window.heldoutViews && window.heldoutViews.forest")
        assert page.locator("#plot-forest svg").count() == 1
        browser.close()
