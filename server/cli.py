"""`heldout`: the command line for organizers, participants and operators.

Human output by default, `--json` for scripts. Commands that talk to a server use
HELDOUT_API_URL and HELDOUT_TOKEN; `server`, `worker`, `db` and `token create` act on the
local installation directly.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from server import config

app = typer.Typer(
    help="heldout: medical-imaging challenges on sequestered data.", no_args_is_help=True
)
challenge_app = typer.Typer(help="Create and update challenges.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
team_app = typer.Typer(
    help="Teams: invitations the invitee accepts, leaving.", no_args_is_help=True
)
app.add_typer(challenge_app, name="challenge")
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
app.add_typer(team_app, name="team")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="machine-readable output")
FINAL = {"succeeded", "failed", "cancelled"}


def get_settings() -> config.Settings:
    """The settings; a refused one (the production guard, a malformed value) ends the
    command with one line per problem instead of a traceback."""
    from pydantic import ValidationError

    try:
        return config.get_settings()
    except ValidationError as exc:
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            err.print(f"error: {where + ': ' if where else ''}{e['msg']}", markup=False)
        raise typer.Exit(2) from None


def _client() -> Any:
    from server.client import Client

    return Client(get_settings())


def _fail(message: str, code: int = 1) -> None:
    err.print("error:", style="red", end=" ")
    err.print(message, markup=False, highlight=False)
    raise typer.Exit(code)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an API call, turning HTTP and connection errors into one clear line."""
    import httpx

    from server.client import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        body = exc.body
        msg = str(body.get("detail") or body)
        if body.get("field"):
            msg += f" [field: {body['field']}]"
        if body.get("rule"):
            msg += f" [rule: {body['rule']}]"
        if body.get("next_allowed_at"):
            msg += f" [next allowed: {body['next_allowed_at']}]"
        _fail(f"{exc.status} {msg}")
    except httpx.TransportError as exc:
        _fail(f"cannot reach the heldout server at {get_settings().api_url}: {exc}")


def _emit(data: Any, as_json: bool) -> bool:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    return as_json


# --- operators -------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations (alembic upgrade head)."""
    from server.embedded import migrate

    settings = get_settings()
    migrate(settings)
    out.print("database is at the latest migration")
    _rescore_stale(settings)


def _rescore_stale(settings: config.Settings) -> None:
    """Re-score results of another evaluator (the first start after an upgrade)."""
    from server.db import session_scope
    from server.leaderboards.service import reevaluate_all

    with session_scope(settings) as session:
        queued = reevaluate_all(session)
    if queued:
        out.print(f"re-scoring {len(queued)} submission(s) scored by another evaluator")


@app.command()
def server(
    host: str = typer.Option(None, help="default: HELDOUT_HOST"),
    port: int = typer.Option(None, help="default: HELDOUT_PORT"),
    workers: int = typer.Option(None, min=1, help="processes; default: HELDOUT_SERVER_WORKERS"),
) -> None:
    """Run the API server (migrates the database first; starts embedded Redis if needed)."""
    import uvicorn

    from server.app import SHUTDOWN_GRACE_S
    from server.embedded import ensure_redis, migrate

    settings = get_settings()
    ensure_redis(settings)
    migrate(settings)
    _rescore_stale(settings)
    # Each worker process builds the app from the same HELDOUT_* environment.
    uvicorn.run(
        "server.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.server_workers,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


@app.command()
def worker(
    queues: str = typer.Option("build,cpu,gpu,evaluation", help="comma-separated queues"),
    concurrency: int = typer.Option(None, help="default: HELDOUT_WORKER_CONCURRENCY"),
) -> None:
    """Run a Celery worker consuming the given queues."""
    from server.embedded import ensure_redis

    settings = get_settings()
    ensure_redis(settings)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency or settings.worker_concurrency),
        "-l",
        "INFO",
        # Threads: the work is waiting on containers, and forked children would inherit
        # Docker and database connections.
        "-P",
        "threads",
    ]
    os.execv(sys.executable, argv)


@app.command(
    "run-local",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def run_local(ctx: typer.Context) -> None:
    """Run an image or codebase on your own cases exactly as the platform would
    (see `heldout run-local --help`)."""
    # The runner lives in the worker package, which the server side never imports.
    os.execv(sys.executable, [sys.executable, "-m", "worker.local", *ctx.args])


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def demo(ctx: typer.Context) -> None:
    """Run a STOIC-style challenge end to end on synthetic CTs (see `heldout demo --help`)."""
    os.execv(sys.executable, [sys.executable, "-m", "baseline_algorithm.demo", *ctx.args])


@token_app.command("create")
def token_create(
    user: str = typer.Option(..., "--user", help="username (created if missing)"),
    admin: bool = typer.Option(False, "--admin", help="make the user an administrator"),
    name: str = typer.Option("cli", help="a label for the token"),
    as_json: bool = JsonOpt,
) -> None:
    """Create an API token on this installation's database. The token is shown once."""
    from server.accounts import service as accounts
    from server.db import session_scope
    from server.embedded import migrate

    settings = get_settings()
    migrate(settings)
    with session_scope(settings) as session:
        account = accounts.get_or_create_user(session, user, is_admin=admin)
        row, token = accounts.create_token(session, account, name)
        data = {"user": account.username, "admin": account.is_admin, "token": token, "id": row.id}
    if not _emit(data, as_json):
        out.print(f"token for {data['user']} (shown once, store it now):")
        typer.echo(token)


# --- organizers ------------------------------------------------------------------------


def _tar_dir(root: Path) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
    with tarfile.open(name, "w") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return Path(name)


@challenge_app.command("apply")
def challenge_apply(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="challenge YAML"),
    plan: bool = typer.Option(
        False, "--plan", help="check the bundle and print what would change; change nothing"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create or update a challenge from a bundle; applying it twice changes nothing.
    Every apply first dry-runs the metric config on the test labels."""
    import yaml

    from server.challenges.bundle import load_bundle
    from server.client import ApiError
    from server.datasets import manifest
    from server.errors import HeldoutError

    try:
        spec = load_bundle(bundle)
        client = _client()
        try:
            existing = client.get(f"/challenges/{spec.slug}/datasets")
        except ApiError as exc:
            if exc.status != 404:  # a new challenge has no datasets yet
                raise
            existing = []
        known = {d["slug"]: d["digest"] for d in existing}
        uploads: dict[str, str] = {}
        for ds in spec.datasets:
            root = (bundle.parent / ds.path).resolve()
            if not root.is_dir():
                _fail(
                    f"dataset {ds.slug!r}: {root} is not a directory"
                    f" [field: datasets.{ds.slug}.path]"
                )
            local = manifest.scan(root)
            if known.get(ds.slug) == local.digest:
                continue
            archive = _tar_dir(root)
            try:
                err.print(f"uploading dataset {ds.slug} ({len(local.rows)} cases)")
                up = _call(client.upload, archive)
            finally:
                archive.unlink(missing_ok=True)
            uploads[ds.slug] = up["key"]
        data = yaml.safe_load(bundle.read_text())
    except HeldoutError as exc:
        _fail(f"{exc.detail}" + (f" [field: {exc.field}]" if exc.field else ""))
    except ApiError as exc:
        _fail(str(exc))
    body = {"bundle": data, "datasets": uploads, "plan": plan}
    result = _call(client.post, "/challenges/apply", body)
    if _emit(result, as_json):
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
    result = _call(_client().get, f"/challenges/{slug}/events")
    if _emit(result, as_json):
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
    repo: str = typer.Option(None, "--repo", help="git repository URL, codebase phases"),
    ref: str = typer.Option(None, "--ref", help="branch, tag or commit"),
    comment: str = typer.Option("", help="a note kept with the submission"),
    follow: bool = typer.Option(False, "--follow", help="follow progress until it ends"),
    as_json: bool = JsonOpt,
) -> None:
    """Submit an algorithm image or a codebase to a phase."""
    if bool(image) == bool(repo):
        _fail("give either --image ARCHIVE or --repo URL --ref REF")
    client = _client()
    body: dict[str, Any] = {"comment": comment}
    if image:
        size = image.stat().st_size
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            disable=as_json,
        ) as bar:
            task = bar.add_task(f"upload {image.name}", total=size)
            up = _call(client.upload, image, lambda done, _total: bar.update(task, completed=done))
        body["upload"] = up["key"]
    else:
        if not ref:
            _fail("--repo needs --ref")
        body.update(repository_url=repo, ref=ref)
    sub = _call(client.post, f"/challenges/{challenge}/phases/{phase}/submissions", body)
    if follow:
        _follow(client, sub["id"], as_json)
        return
    if not _emit(sub, as_json):
        out.print(f"submission [bold]{sub['id']}[/bold] accepted: {sub['status']}")
        out.print(f"follow it with: heldout status {sub['id']}")


def _follow(
    client: Any, submission_id: int, as_json: bool, interval: float = 1.0
) -> dict[str, Any]:
    seen = 0
    while True:
        sub = _call(client.get, f"/submissions/{submission_id}")
        if not as_json:
            for t in sub["transitions"][seen:]:
                note = f" ({t['note']})" if t["note"] else ""
                out.print(f"{t['at'][:19]}  {t['to_status']}{note}")
                if t is sub["transitions"][-1]:
                    _print_queue(sub)
            seen = len(sub["transitions"])
        if sub["status"] in FINAL:
            break
        time.sleep(interval)
    if not _emit(sub, as_json):
        _print_outcome(sub)
    return dict(sub)


def _print_outcome(sub: dict[str, Any]) -> None:
    if sub["status"] == "failed":
        out.print(f"[red]failed[/red]: {sub['failure_code']}: {sub['failure_message']}")
        if not sub["charged"]:
            out.print("this failure does not count against your team's limits")
    elif sub["status"] == "succeeded":
        out.print("[green]succeeded[/green]")


@app.command()
def status(
    submission_id: int = typer.Argument(...),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="follow until it ends"),
    as_json: bool = JsonOpt,
) -> None:
    """Show a submission's state, following it live until it ends."""
    client = _client()
    if follow:
        _follow(client, submission_id, as_json)
        return
    sub = _call(client.get, f"/submissions/{submission_id}")
    if _emit(sub, as_json):
        return
    out.print(
        f"submission {sub['id']} ({sub['challenge']}/{sub['phase']}, team {sub['team']}): "
        f"[bold]{sub['status']}[/bold]"
    )
    for job in sub["jobs"]:
        states = ", ".join(f"{k} {v}" for k, v in sorted(job["by_status"].items()))
        out.print(f"  {job['kind']:9} {states}")
    _print_queue(sub)
    _print_outcome(sub)


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
    sub = _call(_client().post, f"/submissions/{submission_id}/cancel")
    if not _emit(sub, as_json):
        out.print(f"submission {sub['id']}: {sub['status']}")


def _print_team(team: dict[str, Any]) -> None:
    out.print(f"team {team['name']} (id {team['id']}): {', '.join(team['members'])}")
    if team.get("invited"):
        out.print(f"invited: {', '.join(team['invited'])}")


@team_app.command("create")
def team_create(challenge: str, name: str, as_json: bool = JsonOpt) -> None:
    """Found a team in a challenge (you become its first member)."""
    team = _call(_client().post, f"/challenges/{challenge}/teams", {"name": name})
    if not _emit(team, as_json):
        _print_team(team)


@team_app.command("show")
def team_show(challenge: str, as_json: bool = JsonOpt) -> None:
    """Your team in a challenge: members and pending invitations."""
    team = _call(_client().get, f"/challenges/{challenge}/teams/mine")
    if not _emit(team, as_json):
        _print_team(team)


@team_app.command("invite")
def team_invite(team_id: int, username: str, as_json: bool = JsonOpt) -> None:
    """Invite a user into your team; they join only if they accept."""
    inv = _call(_client().post, f"/teams/{team_id}/invitations", {"username": username})
    if not _emit(inv, as_json):
        out.print(f"invitation {inv['id']}: {inv['invitee']} to {inv['team']}, {inv['status']}")


@team_app.command("invitations")
def team_invitations(as_json: bool = JsonOpt) -> None:
    """Invitations waiting for your answer."""
    invs = _call(_client().get, "/team-invitations")
    if not _emit(invs, as_json):
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
    team = _call(_client().post, f"/team-invitations/{invitation_id}/accept")
    if not _emit(team, as_json):
        _print_team(team)


@team_app.command("decline")
def team_decline(invitation_id: int, as_json: bool = JsonOpt) -> None:
    inv = _call(_client().post, f"/team-invitations/{invitation_id}/decline")
    if not _emit(inv, as_json):
        out.print(f"invitation {inv['id']}: {inv['status']}")


@team_app.command("leave")
def team_leave(team_id: int, as_json: bool = JsonOpt) -> None:
    """Leave a team (refused once the team has submitted)."""
    left = _call(_client().post, f"/teams/{team_id}/leave")
    if not _emit(left, as_json):
        out.print(f"you left team {left['left']}")


@app.command()
def rules(challenge: str, phase: str, as_json: bool = JsonOpt) -> None:
    """Show a phase's submission rules."""
    data = _call(_client().get, f"/challenges/{challenge}/phases/{phase}/rules")
    if not _emit(data, as_json):
        for line in data["text"]:
            out.print(f"- {line}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command()
def leaderboard(challenge: str, phase: str, as_json: bool = JsonOpt) -> None:
    """Show a phase's leaderboard (primary metric with its 95% CI)."""
    data = _call(_client().get, f"/challenges/{challenge}/phases/{phase}/leaderboard")
    if _emit(data, as_json):
        return
    table = Table(title=f"{challenge} / {phase} — ranked on {data['primary_metric']}")
    table.add_column("rank", justify="right")
    table.add_column("team")
    table.add_column("submission", justify="right")
    table.add_column(data["primary_metric"], justify="right")
    table.add_column("95% CI", justify="right")
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

    data = _call(_client().download, f"/challenges/{challenge}/analysis/report")
    target = (out_dir or Path(f"{challenge}-report")).resolve()
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            dest = (target / name).resolve()
            if not dest.is_relative_to(target):
                _fail(f"the report holds a path outside its directory: {name!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(name))
    out.print(
        f"report: {target / 'report.html'} (PDF: {target / 'report.pdf'})",
        markup=False,
        highlight=False,
    )


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
