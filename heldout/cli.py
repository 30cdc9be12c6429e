"""`heldout`: the command line for participants and organizers, on top of `heldout.Client`.

Human output by default, `--json` for scripts. The server is HELDOUT_API_URL (or --api-url),
the token HELDOUT_TOKEN (or --token). The operators' commands (`server`, `worker`, `db`,
`token`, `run-local`, `demo`) live in server/cli.py and need `heldout[server]`.

Exit codes: 0 succeeded, 1 failed (a failed submission, an unreachable server), 2 usage or
a refusal (bad input, a rule, a permission), 3 cancelled. Every expected error is one line.
"""

from __future__ import annotations

import datetime as dt
import difflib
import importlib.util
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from heldout.client import FINAL, ApiError, Client, RefusedLocally

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELLED = 0, 1, 2, 3

app = typer.Typer(
    help="heldout: medical-imaging challenges on sequestered data.", no_args_is_help=True
)
challenge_app = typer.Typer(help="Create and update challenges.", no_args_is_help=True)
team_app = typer.Typer(
    help="Teams: invitations the invitee accepts, leaving.", no_args_is_help=True
)
app.add_typer(challenge_app, name="challenge")
app.add_typer(team_app, name="team")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="machine-readable output")
T = TypeVar("T")


@dataclass
class _Target:
    api_url: str = "http://127.0.0.1:8000"
    token: str | None = None
    client: Client | None = field(default=None, repr=False)


_target = _Target()


@app.callback()
def _options(
    api_url: str = typer.Option(
        "http://127.0.0.1:8000", "--api-url", envvar="HELDOUT_API_URL", help="the server"
    ),
    token: str = typer.Option(
        None, "--token", envvar="HELDOUT_TOKEN", help="your API token", show_default=False
    ),
) -> None:
    _target.api_url, _target.token, _target.client = api_url, token, None


def make_client() -> Client:
    if _target.client is None:
        _target.client = Client(_target.api_url, _target.token)
    return _target.client


def exit_with(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print("error:", style="red", end=" ")
    err.print(message, markup=False, highlight=False)
    raise typer.Exit(code)


def _api_message(exc: ApiError) -> str:
    body = exc.body
    msg = exc.detail
    if body.get("field"):
        msg += f" [field: {body['field']}]"
    if body.get("rule"):
        msg += f" [rule: {body['rule']}]"
    if body.get("next_allowed_at"):
        msg += f" [next allowed: {body['next_allowed_at']}]"
    return f"{exc.status} {msg}"


def _suggestion(exc: ApiError, challenge: str | None, phase: str | None) -> str:
    """ "did you mean …" for an unknown challenge or phase slug; the boards to read instead
    of a multi-task phase's own."""
    if exc.status == 409 and "consensus" in exc.body and challenge and phase:
        return (
            f"; list its tasks: heldout tasks {challenge} {phase}; read one: heldout "
            f"leaderboard {challenge} {phase} --task TASK (or --consensus)"
        )
    if exc.status != 404 or challenge is None:
        return ""
    client = make_client()
    try:
        if exc.body.get("field") == "challenge":
            known = [c["slug"] for c in client.challenges()]
            wrong, listing = challenge, "heldout challenges"
        elif exc.body.get("field") == "phase" and phase is not None:
            known = [p["slug"] for p in client.phases(challenge)]
            wrong, listing = phase, f"heldout phases {challenge}"
        else:
            return ""
    except (ApiError, httpx.HTTPError):
        return ""
    if wrong in known:
        return ""  # the slug is right: the phase lacks what was asked (no tasks, say)
    close = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}? (list them: {listing})"
    return f"; list them: {listing}"


def call_api(
    fn: Callable[..., T],
    *args: Any,
    challenge: str | None = None,
    phase: str | None = None,
    **kwargs: Any,
) -> T:
    """Run an API call; an HTTP refusal or an unreachable server ends the command with one
    line saying what to do (exit 2 for refusals, 1 when the server is down or broken)."""
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        _refused(exc, challenge, phase)
    except RefusedLocally as exc:
        exit_with(
            f"{exc.message} [field: {exc.field}] (refused here: nothing uploaded)", EXIT_REFUSED
        )
    except httpx.TransportError as exc:
        _unreachable(exc)


def _refused(exc: ApiError, challenge: str | None = None, phase: str | None = None) -> NoReturn:
    if exc.status == 401:
        exit_with(
            f"401 {exc.detail}: set HELDOUT_TOKEN to a token of this server "
            f"({_target.api_url}); an operator makes one with `heldout token create`",
            EXIT_REFUSED,
        )
    code = EXIT_REFUSED if exc.status < 500 else EXIT_FAILED
    exit_with(_api_message(exc) + _suggestion(exc, challenge, phase), code)


def _unreachable(exc: httpx.TransportError) -> NoReturn:
    exit_with(
        f"cannot reach the heldout server at {_target.api_url} ({exc}); is it running? "
        "Point HELDOUT_API_URL (or --api-url) at it"
    )


def emit(data: Any, as_json: bool) -> bool:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    return as_json


def need_extra(module: str, extra: str, command: str) -> None:
    """End a command whose dependencies (an extra) are not installed with what to install."""
    if importlib.util.find_spec(module) is None:
        exit_with(
            f"`heldout {command}` needs the {extra} side of heldout, which is not installed: "
            f"pip install 'heldout[{extra}]'",
            EXIT_REFUSED,
        )


# --- browsing --------------------------------------------------------------------------


@app.command()
def challenges(as_json: bool = JsonOpt) -> None:
    """List the challenges on the server."""
    rows = call_api(make_client().challenges)
    if emit(rows, as_json):
        return
    for c in rows:
        out.print(f"{c['slug']:24} {c['title']}", markup=False, highlight=False)
    if not rows:
        out.print("no challenges yet")


def _when(value: str | None) -> str:
    return value[:16].replace("T", " ") + " UTC" if value else "-"


@app.command()
def phases(challenge: str, as_json: bool = JsonOpt) -> None:
    """List a challenge's phases with their kind and dates."""
    rows = call_api(make_client().phases, challenge, challenge=challenge)
    if emit(rows, as_json):
        return
    for p in rows:
        out.print(
            f"{p['slug']:16} {p['kind']:9} opens {_when(p['opens_at']):20} "
            f"closes {_when(p['closes_at']):20} {p['title']}",
            markup=False,
            highlight=False,
        )
    if not rows:
        out.print("no phases yet")


# --- organizers ------------------------------------------------------------------------


def _tar_dir(root: Path) -> Path:
    fd, name = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
    with tarfile.open(name, "w") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return Path(name)


def _jsonable(value: Any) -> Any:
    """YAML reads unquoted dates as datetimes; the API takes ISO 8601 strings."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _read_bundle(bundle: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(bundle.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        exit_with(f"{bundle} is not valid YAML{where}: {exc.problem}", EXIT_REFUSED)
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        exit_with(f"cannot read {bundle}: {exc}", EXIT_REFUSED)
    if not isinstance(data, dict):
        exit_with(f"{bundle} must be a YAML mapping (slug, title, datasets, phases)", EXIT_REFUSED)
    return dict(_jsonable(data))


def _dataset_slugs(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for i, ds in enumerate(data.get("datasets") or []):
        if not isinstance(ds, dict) or not ds.get("slug") or not ds.get("path"):
            exit_with(f"datasets[{i}] needs a slug and a path [field: datasets]", EXIT_REFUSED)
        yield str(ds["slug"]), str(ds["path"])


def _scan(root: Path) -> tuple[str, int] | None:
    """The dataset's digest as the server computes it, where that code is installed."""
    try:
        from server.datasets import manifest
    except ImportError:
        return None
    local = manifest.scan(root)
    return local.digest, len(local.rows)


@challenge_app.command("apply")
def challenge_apply(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="challenge YAML"),
    plan: bool = typer.Option(
        False, "--plan", help="check the bundle and print what would change; change nothing"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create or update a challenge from a bundle; applying it twice changes nothing.
    Every apply first dry-runs the metric config on the test labels (see docs/bundle.md)."""
    data = _read_bundle(bundle)
    slug = data.get("slug")
    if not isinstance(slug, str) or not slug:
        exit_with(f"{bundle} has no slug [field: slug]", EXIT_REFUSED)
    client = make_client()
    try:
        existing = client.get(f"/challenges/{slug}/datasets")
    except ApiError as exc:
        if exc.status != 404:  # 403: not an organizer of it
            _refused(exc)
        existing = []
        # A new challenge: only an administrator may create it; say so before uploading.
        me = call_api(client.me)
        if not me["is_admin"]:
            exit_with(
                f"challenge {slug!r} does not exist and only an administrator may create a "
                "challenge; ask one to apply the bundle first (nothing was uploaded)",
                EXIT_REFUSED,
            )
    except httpx.TransportError as exc:
        _unreachable(exc)
    known = {d["slug"]: d["digest"] for d in existing}
    uploads: dict[str, str] = {}
    for ds_slug, rel in _dataset_slugs(data):
        root = (bundle.parent / rel).resolve()
        if not root.is_dir():
            exit_with(
                f"dataset {ds_slug!r}: {root} is not a directory [field: datasets.{ds_slug}.path]",
                EXIT_REFUSED,
            )
        scanned = _scan(root)
        if scanned is not None and known.get(ds_slug) == scanned[0]:
            continue
        archive = _tar_dir(root)
        try:
            cases = f" ({scanned[1]} cases)" if scanned else ""
            err.print(f"uploading dataset {ds_slug}{cases}")
            up = call_api(client.upload, archive)
        finally:
            archive.unlink(missing_ok=True)
        uploads[ds_slug] = up["key"]
    body = {"bundle": data, "datasets": uploads, "plan": plan}
    result = call_api(client.post, "/challenges/apply", body)
    if emit(result, as_json):
        return
    if plan:
        verb = "would change" if result["changed"] else "would not change"
        out.print(
            f"plan for challenge [bold]{result['challenge']}[/bold]: {verb} (nothing applied)"
        )
    else:
        verb = "changed" if result["changed"] else "unchanged"
        out.print(f"challenge [bold]{result['challenge']}[/bold]: {verb}")
    for key in ("created", "updated", "unchanged"):
        for item in result[key]:
            out.print(f"  {key:9} {item}", markup=False)
    for line in result.get("details", []):
        out.print(f"  changes   {line}", markup=False)
    for line in result.get("warnings", []):
        err.print(f"warning: {line}", markup=False)
    if result["rescored"]:
        label = "would re-evaluate" if plan else "re-evaluating"
        ids = ", ".join(str(i) for i in result["rescored"])
        out.print(f"  {label} submissions {ids}")
    if result.get("reinferred"):
        label = "would re-run" if plan else "re-running"
        ids = ", ".join(str(i) for i in result["reinferred"])
        out.print(f"  {label} submissions {ids} on the changed test cases (not charged)")


@challenge_app.command("events")
def challenge_events(slug: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """Events for the organizers: evaluations their metric config broke, platform errors."""
    result = call_api(make_client().get, f"/challenges/{slug}/events", challenge=slug)
    if emit(result, as_json):
        return
    if not result:
        out.print("no events")
    for e in result:
        where = f"phase {e['phase']}" if e["phase"] else "challenge"
        out.print(f"{e['created_at']}  {e['kind']:24} {where}: {e['message']}", markup=False)


# --- participants ----------------------------------------------------------------------


@app.command()
def submit(
    challenge: str = typer.Argument(...),
    phase: str = typer.Argument(...),
    image: Path = typer.Option(
        None,
        "--image",
        exists=True,
        dir_okay=False,
        help="`docker save` archive (.tar or .tar.gz), algorithm phases",
    ),
    model: Path = typer.Option(
        None,
        "--model",
        exists=True,
        dir_okay=False,
        help="a model tarball (.tar.gz) mounted read-only at /opt/ml/model, with --image",
    ),
    repo: str = typer.Option(None, "--repo", help="git repository URL, codebase phases"),
    ref: str = typer.Option(None, "--ref", help="branch, tag or commit"),
    comment: str = typer.Option("", help="a note kept with the submission"),
    follow: bool = typer.Option(False, "--follow", help="follow progress until it ends"),
    as_json: bool = JsonOpt,
) -> None:
    """Submit an algorithm image or a codebase to a phase. The phase, its dates, your
    quota and the image are checked before anything is uploaded."""
    if bool(image) == bool(repo):
        exit_with("give either --image ARCHIVE or --repo URL --ref REF", EXIT_REFUSED)
    if repo and not ref:
        exit_with("--repo needs --ref", EXIT_REFUSED)
    client = make_client()
    # Shown once the upload starts: the checks before it print nothing but their verdict.
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        disable=as_json,
        transient=True,
    )
    task = bar.add_task(f"upload {image.name if image else ''}", total=None)

    def progress(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        sub = call_api(
            client.submit,
            challenge,
            phase,
            image=image,
            repository_url=repo,
            ref=ref,
            comment=comment,
            progress=progress,
            model=model,
            challenge=challenge,
            phase=phase,
        )
    finally:
        if bar.live.is_started:
            bar.stop()
    if follow:
        _exit_for(_follow(client, sub["id"], as_json))
    if not emit(sub, as_json):
        out.print(f"submission [bold]{sub['id']}[/bold] accepted: {sub['status']}")
        out.print(f"follow it with: heldout status {sub['id']}")


def _parse(at: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(at)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _took(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _jobs_line(job: dict[str, Any]) -> str:
    counts = job["by_status"]
    total = sum(counts.values())
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return f"{job['kind']} jobs: {parts} (of {total})"


def _follow(
    client: Client, submission_id: int, as_json: bool, interval: float = 1.0
) -> dict[str, Any]:
    """Each step as it ends with the time it took, job counts while a step runs, and the
    score at the end."""
    seen = 0
    jobs_seen: dict[str, str] = {}
    started = time.monotonic()

    def show(sub: dict[str, Any]) -> None:
        nonlocal seen
        if as_json:
            return
        steps = sub["transitions"]
        for i in range(seen, len(steps)):
            t = steps[i]
            note = f" ({t['note']})" if t["note"] else ""
            took = ""
            if i > 0:
                prev = steps[i - 1]
                secs = (_parse(t["at"]) - _parse(prev["at"])).total_seconds()
                took = f"  [{prev['to_status']} took {_took(secs)}]"
            out.print(f"{t['at'][:19]}  {t['to_status']}{note}{took}", markup=False)
            if i == len(steps) - 1 and sub["status"] not in FINAL:
                _print_queue(sub)
        seen = len(steps)
        if sub["status"] in FINAL:
            return
        for job in sub["jobs"]:
            line = _jobs_line(job)
            if jobs_seen.get(job["kind"]) != line:
                jobs_seen[job["kind"]] = line
                elapsed = _took(time.monotonic() - started)
                out.print(f"  {elapsed:>6}  {line}", markup=False)

    sub = call_api(client.wait, submission_id, show, interval=interval)
    if not emit(sub, as_json):
        _print_outcome(client, sub)
    return sub


def _exit_for(sub: dict[str, Any]) -> NoReturn:
    code = {"failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}.get(sub["status"], EXIT_OK)
    raise typer.Exit(code)


def _pct(level: Any) -> str:
    return f"{round(float(level) * 100, 2):g}% CI" if level is not None else "CI"


def _print_outcome(client: Client, sub: dict[str, Any]) -> None:
    total = ""
    if sub.get("finished_at"):
        secs = (_parse(sub["finished_at"]) - _parse(sub["created_at"])).total_seconds()
        total = f" in {_took(secs)}"
    if sub["status"] == "failed":
        out.print(
            f"[red]failed[/red]{total}: {sub['failure_code']}: {sub['failure_message']}",
        )
        if not sub["charged"]:
            out.print("this failure does not count against your team's limits")
    elif sub["status"] == "cancelled":
        out.print(f"cancelled{total}")
    elif sub["status"] == "succeeded":
        try:
            score = client.score(sub)
        except (ApiError, httpx.HTTPError):
            score = None
        if score is None:
            out.print(
                f"[green]done[/green]{total}: scored; see `heldout leaderboard "
                f"{sub['challenge']} {sub['phase']}`"
            )
            return
        lo, hi = score["ci"]
        out.print(
            f"[green]done[/green]{total}: {score['primary_metric']} {_fmt(score['value'])} "
            f"({_pct(score['ci_level'])} [{_fmt(lo)}, {_fmt(hi)}]), rank {score['rank']}"
        )


@app.command()
def status(
    submission_id: int = typer.Argument(...),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="follow until it ends"),
    as_json: bool = JsonOpt,
) -> None:
    """Show a submission's state, following it live until it ends. Exit code: 0 succeeded
    (or still running, with --no-follow), 1 failed, 3 cancelled."""
    client = make_client()
    if follow:
        _exit_for(_follow(client, submission_id, as_json))
    sub = call_api(client.submission, submission_id)
    if not emit(sub, as_json):
        out.print(
            f"submission {sub['id']} ({sub['challenge']}/{sub['phase']}, team {sub['team']}): "
            f"[bold]{sub['status']}[/bold]"
        )
        for job in sub["jobs"]:
            out.print(f"  {_jobs_line(job)}", markup=False)
        _print_queue(sub)
        _print_outcome(client, sub)
    if sub["status"] in FINAL:
        _exit_for(sub)


@app.command()
def logs(
    submission_id: int = typer.Argument(...),
    job: int | None = typer.Option(None, "--job", help="only this job's log"),
    as_json: bool = JsonOpt,
) -> None:
    """Every log of a submission you may read: build, canary, feedback-round training, the
    inference build, and logs the organizers released. Held logs say they are held."""
    entries = call_api(make_client().submission_logs, submission_id, job)
    if emit(entries, as_json):
        return
    if not entries:
        out.print(f"submission {submission_id} has no jobs yet")
    for entry in entries:
        part = " (inference build)" if entry["part"] == "inference_build" else ""
        state = " released by the organizers" if entry.get("released") else ""
        out.print(
            f"[bold]== job {entry['job_id']} {entry['kind']}{part}: {entry['status']}{state}[/bold]"
        )
        if entry["held"]:
            out.print(f"held: {entry['note']}", markup=False)
        else:
            out.print((entry["log"] or "(empty log)").rstrip("\n"), markup=False)


def _print_queue(sub: dict[str, Any]) -> None:
    q = sub.get("queue")
    if not q:
        return
    eta = q["estimated_start_at"][:19] if q["estimated_start_at"] else "unknown yet"
    out.print(
        f"  queue {q['queue']}: position {q['position']} ({q['jobs_ahead']} jobs ahead), "
        f"estimated start {eta}"
    )


@app.command()
def cancel(submission_id: int = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """Cancel one of your team's submissions."""
    sub = call_api(make_client().cancel, submission_id)
    if not emit(sub, as_json):
        out.print(f"submission {sub['id']}: {sub['status']}")


def _print_team(team: dict[str, Any]) -> None:
    out.print(f"team {team['name']} (id {team['id']}): {', '.join(team['members'])}")
    if team.get("invited"):
        out.print(f"invited: {', '.join(team['invited'])}")


@team_app.command("create")
def team_create(challenge: str, name: str, as_json: bool = JsonOpt) -> None:
    """Found a team in a challenge (you become its first member)."""
    team = call_api(
        make_client().post, f"/challenges/{challenge}/teams", {"name": name}, challenge=challenge
    )
    if not emit(team, as_json):
        _print_team(team)


@team_app.command("show")
def team_show(challenge: str, as_json: bool = JsonOpt) -> None:
    """Your team in a challenge: members and pending invitations."""
    team = call_api(make_client().get, f"/challenges/{challenge}/teams/mine", challenge=challenge)
    if not emit(team, as_json):
        _print_team(team)


@team_app.command("invite")
def team_invite(team_id: int, username: str, as_json: bool = JsonOpt) -> None:
    """Invite a user into your team; they join only if they accept."""
    inv = call_api(make_client().post, f"/teams/{team_id}/invitations", {"username": username})
    if not emit(inv, as_json):
        out.print(f"invitation {inv['id']}: {inv['invitee']} to {inv['team']}, {inv['status']}")


@team_app.command("invitations")
def team_invitations(as_json: bool = JsonOpt) -> None:
    """Invitations waiting for your answer."""
    invs = call_api(make_client().get, "/team-invitations")
    if not emit(invs, as_json):
        for inv in invs:
            out.print(
                f"invitation {inv['id']}: team {inv['team']} in {inv['challenge']}, "
                f"from {inv['invited_by']}"
            )
        if not invs:
            out.print("no pending invitations")


@team_app.command("accept")
def team_accept(invitation_id: int, as_json: bool = JsonOpt) -> None:
    """Accept an invitation and join its team."""
    team = call_api(make_client().post, f"/team-invitations/{invitation_id}/accept")
    if not emit(team, as_json):
        _print_team(team)


@team_app.command("decline")
def team_decline(invitation_id: int, as_json: bool = JsonOpt) -> None:
    inv = call_api(make_client().post, f"/team-invitations/{invitation_id}/decline")
    if not emit(inv, as_json):
        out.print(f"invitation {inv['id']}: {inv['status']}")


@team_app.command("leave")
def team_leave(team_id: int, as_json: bool = JsonOpt) -> None:
    """Leave a team (refused once the team has submitted)."""
    left = call_api(make_client().post, f"/teams/{team_id}/leave")
    if not emit(left, as_json):
        out.print(f"you left team {left['left']}")


@app.command()
def rules(challenge: str, phase: str, as_json: bool = JsonOpt) -> None:
    """Show a phase's dates, submission rules and your team's use of them."""
    data = call_api(make_client().rules, challenge, phase, challenge=challenge, phase=phase)
    if emit(data, as_json):
        return
    out.print(
        f"{challenge} / {phase}: opens {_when(data['opens_at'])}, "
        f"closes {_when(data['closes_at'])}",
        markup=False,
    )
    for line in data["text"]:
        out.print(f"- {line}", markup=False)
    used, r = data["usage"], data["rules"]
    if r.get("max_submissions"):
        out.print(
            f"your team: {used['used_in_window']} of {r['max_submissions']} used in the last "
            f"{r['window_hours']:g} h ({used['charged']} counted in all)",
            markup=False,
        )
    else:
        out.print(f"your team: {used['charged']} submission(s) counted so far", markup=False)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command()
def leaderboard(
    challenge: str,
    phase: str,
    task: str | None = typer.Option(None, "--task", help="a multi-task phase's task board"),
    consensus: bool = typer.Option(
        False, "--consensus", help="a multi-task phase's consensus board (mean task rank)"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Show a phase's leaderboard (primary metric with its confidence interval); for a
    multi-task phase, a task's board (--task SLUG) or the consensus board (--consensus)."""
    if task and consensus:
        exit_with("give --task or --consensus, not both", EXIT_REFUSED)
    client = make_client()
    if consensus:
        data = call_api(client.consensus, challenge, phase, challenge=challenge, phase=phase)
        if not emit(data, as_json):
            _consensus_table(challenge, phase, data)
        return
    if task:
        data = call_api(
            client.task_leaderboard, challenge, phase, task, challenge=challenge, phase=phase
        )
        title = f"{challenge} / {phase} / task {task}"
    else:
        data = call_api(client.leaderboard, challenge, phase, challenge=challenge, phase=phase)
        title = f"{challenge} / {phase}"
    if not emit(data, as_json):
        _board_table(title, data)


def _board_table(title: str, data: dict[str, Any]) -> None:
    table = Table(title=f"{title} — ranked on {data['primary_metric']}")
    table.add_column("rank", justify="right")
    table.add_column("team")
    table.add_column("submission", justify="right")
    table.add_column(data["primary_metric"], justify="right")
    table.add_column(_pct(data.get("ci_level")), justify="right")
    others = [m["name"] for m in data["metrics"] if not m["primary"]]
    for name in others:
        table.add_column(name, justify="right")
    for e in data["entries"]:
        lo, hi = e["ci"]
        row = [
            str(e["rank"]),
            e["team"],
            str(e.get("submission_id", "")),
            _fmt(e["value"]),
            f"[{_fmt(lo)}, {_fmt(hi)}]",
        ]
        row += [_fmt(e["metrics"].get(n, {}).get("value")) for n in others]
        table.add_row(*row)
    out.print(table)
    if not data["entries"]:
        out.print("no scored submissions yet")


def _consensus_table(challenge: str, phase: str, data: dict[str, Any]) -> None:
    table = Table(title=f"{challenge} / {phase} — consensus across tasks")
    table.add_column("rank", justify="right")
    table.add_column("team")
    table.add_column("mean rank", justify="right")
    for t in data["tasks"]:
        table.add_column(f"rank on {t}", justify="right")
    table.add_column("note")
    for e in data["entries"]:
        ranks = ["-" if e["task_ranks"].get(t) is None else str(e["task_ranks"][t])
                 for t in data["tasks"]]  # fmt: skip
        note = "" if e["complete"] else "incomplete: no rank on " + ", ".join(e["missing"])
        rank = "-" if e["rank"] is None else str(e["rank"])
        mean = "-" if e["mean_rank"] is None else f"{e['mean_rank']:g}"
        table.add_row(rank, e["team"], mean, *ranks, note)
    out.print(table)
    out.print(f"consensus: {data['rule']}", markup=False)
    if not data["entries"]:
        out.print("no scored submissions yet")


@app.command()
def tasks(challenge: str, phase: str, as_json: bool = JsonOpt) -> None:
    """List a multi-task phase's tasks (inputs, outputs, primary metric) and their boards."""
    data = call_api(make_client().tasks, challenge, phase, challenge=challenge, phase=phase)
    if emit(data, as_json):
        return
    table = Table(title=f"{challenge} / {phase} — tasks")
    for column in ("task", "title", "inputs", "outputs", "primary metric"):
        table.add_column(column)
    for t in data["tasks"]:
        table.add_row(
            t["slug"], t["title"], ", ".join(t["inputs"]), ", ".join(t["outputs"]),
            t["primary_metric"],
        )  # fmt: skip
    out.print(table)
    out.print(
        f"boards: `heldout leaderboard {challenge} {phase} --task TASK`; across tasks: "
        f"`heldout leaderboard {challenge} {phase} --consensus`",
        markup=False,
    )


@app.command()
def nodes(as_json: bool = JsonOpt) -> None:
    """Admins and organizers: the worker nodes, their queues, GPUs, free disk and heartbeat."""
    data = call_api(make_client().nodes)
    if emit(data, as_json):
        return
    table = Table(title="worker nodes")
    for column in ("node", "queues", "GPUs", "free disk", "cache", "running", "last heartbeat"):
        table.add_column(column, justify="right" if column in ("running",) else "left")
    for n in data:
        beat = str(n["heartbeat_at"])[:19].replace("T", " ")
        table.add_row(
            n["name"],
            ",".join(n["queues"]) or "-",
            ",".join(n["devices"]) or "-",
            _bytes(n["free_disk_bytes"]),
            _bytes(n["cache_bytes"]),
            str(n["running_jobs"]),
            beat if n["alive"] else f"{beat} (silent)",
        )
    out.print(table)
    if not data:
        out.print("no worker node has registered yet (start one: heldout worker --node-name)")


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@app.command()
def report(
    challenge: str,
    out_dir: Path | None = typer.Option(
        None, "--out", help="directory to write (default ./CHALLENGE-report)"
    ),
) -> None:
    """Organizers: write the challenge's analysis report (HTML, PDF, figures, CSV data)."""
    import io
    import zipfile

    data = call_api(make_client().report, challenge, challenge=challenge)
    target = (out_dir or Path(f"{challenge}-report")).resolve()
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            dest = (target / name).resolve()
            if not dest.is_relative_to(target):
                exit_with(f"the report holds a path outside its directory: {name!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(name))
    out.print(
        f"report: {target / 'report.html'} (PDF: {target / 'report.pdf'})",
        markup=False,
        highlight=False,
    )


# --- the operators' side ---------------------------------------------------------------


def _operator_stubs(missing: str) -> None:
    """Without heldout[server], its commands still show up and say what to install."""
    for name in ("server", "worker", "db", "token", "run-local", "demo"):

        def stub(ctx: typer.Context, _name: str = name) -> None:
            exit_with(
                f"`heldout {_name}` runs on the server side, which is not installed "
                f"({missing} is missing): pip install 'heldout[server]' "
                "(workers: 'heldout[worker]')",
                EXIT_REFUSED,
            )

        app.command(
            name,
            help="(needs heldout[server])",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            add_help_option=False,
        )(stub)


try:
    import server.cli  # noqa: F401  (registers the operators' commands on `app`)
except ImportError as exc:  # the light install: no server dependencies
    _operator_stubs(exc.name or str(exc))


def main() -> None:  # pragma: no cover
    app()
