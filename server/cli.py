"""The operators' commands of `heldout`: `server`, `worker`, `db`, `token`, `run-local`,
`demo`. They act on the local installation directly and need `heldout[server]`; the
participants' and organizers' commands are in heldout/cli.py, which registers these.
"""

from __future__ import annotations

import inspect
import os
import sys

import typer

from heldout.cli import (  # noqa: F401  (re-exported for commands added here)
    EXIT_REFUSED,
    JsonOpt,
    app,
    call_api,
    emit,
    err,
    exit_with,
    make_client,
    need_extra,
    out,
)
from server import config

token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
node_token_app = typer.Typer(help="Worker nodes' credentials.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(node_token_app, name="node-token")
app.add_typer(db_app, name="db")


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
    access_log: bool = typer.Option(
        None, "--access-log/--no-access-log", help="a line per request; default: HELDOUT_ACCESS_LOG"
    ),
) -> None:
    """Run the API server (migrates the database first; starts embedded Redis if needed)."""
    import uvicorn

    from server.app import SHUTDOWN_GRACE_S
    from server.embedded import ensure_redis, migrate, stop_redis

    settings = get_settings()
    started = ensure_redis(settings)
    try:
        migrate(settings)
        _rescore_stale(settings)
        # Each worker process builds the app from the same HELDOUT_* environment. A worker
        # starting on a busy machine (importing numpy, scipy and the app) can take longer
        # than uvicorn's default 5 s health check, which then kills it again and again.
        patience = {"timeout_worker_healthcheck": 60}
        if "timeout_worker_healthcheck" not in inspect.signature(uvicorn.run).parameters:
            patience = {}
        uvicorn.run(
            "server.app:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers or settings.server_workers,
            access_log=settings.access_log if access_log is None else access_log,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            **patience,  # type: ignore[arg-type]
        )
    finally:
        if started:  # the embedded Redis goes with the server that started it
            stop_redis(settings)


@app.command()
def worker(
    queues: str = typer.Option(
        "build,cpu,gpu,gpu-2,evaluation", help="comma-separated queues (resource classes)"
    ),
    concurrency: int = typer.Option(
        None, "--concurrency", "-c", help="default: HELDOUT_WORKER_CONCURRENCY"
    ),
    node_name: str = typer.Option(
        None, "--node-name", help="this machine's name among the nodes; default: the host name"
    ),
) -> None:
    """Run a Celery worker consuming the given queues, registered as a node."""
    need_extra("docker", "worker", "worker")
    from server.dispatch import QUEUES
    from server.embedded import ensure_redis

    unknown = sorted(set(queues.split(",")) - set(QUEUES))
    if unknown:
        exit_with(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(QUEUES)}", 2)
    if node_name is not None:
        if not node_name.strip() or any(c.isspace() or c == "@" for c in node_name):
            exit_with(f"--node-name {node_name!r}: no spaces or '@' in a node name", 2)
        os.environ["HELDOUT_NODE_NAME"] = node_name
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
        "-n",
        f"{settings.node_name or 'celery'}@%h",
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
    need_extra("docker", "worker", "run-local")
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
    create: bool = typer.Option(
        False, "--create", help="create the database if this installation has none yet"
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create an API token on this installation's database (the server's HELDOUT_DATA_DIR
    or HELDOUT_DATABASE_URL). The token is shown once."""
    from server.accounts import service as accounts
    from server.db import session_scope
    from server.embedded import has_database, migrate

    settings = get_settings()
    where = (
        f"data directory {settings.data_dir.resolve()}"
        if settings.database_url is None
        else "database HELDOUT_DATABASE_URL"
    )
    if not create and not has_database(settings):
        exit_with(
            f"no heldout database in the {where}: run this where the server runs, with its "
            "HELDOUT_DATA_DIR (or HELDOUT_DATABASE_URL), or pass --create to start a new one",
            EXIT_REFUSED,
        )
    migrate(settings)
    with session_scope(settings) as session:
        account = accounts.get_or_create_user(session, user, is_admin=admin)
        row, token = accounts.create_token(session, account, name)
        data = {"user": account.username, "admin": account.is_admin, "token": token, "id": row.id}
    if not emit(data, as_json):
        err.print(f"using the {where}", markup=False, highlight=False)
        out.print(f"token for {data['user']} (shown once, store it now):")
        typer.echo(token)


@node_token_app.command("create")
def node_token_create(
    name: str = typer.Option(..., "--name", help="the node (or group of nodes) it is for"),
    as_json: bool = JsonOpt,
) -> None:
    """Create a node token on this installation's database, for a worker node that shares no
    filesystem with the server (its HELDOUT_NODE_TOKEN). Shown once."""
    from server.db import session_scope
    from server.embedded import has_database, migrate
    from server.nodes import service as nodes

    settings = get_settings()
    if not has_database(settings):
        exit_with(
            "no heldout database here: run this where the server runs, with its "
            "HELDOUT_DATA_DIR (or HELDOUT_DATABASE_URL)",
            EXIT_REFUSED,
        )
    migrate(settings)
    with session_scope(settings) as session:
        row, token = nodes.create_token(session, None, name)
        data = {"id": row.id, "name": row.name, "token": token}
    if not emit(data, as_json):
        out.print(f"node token {data['name']!r} (shown once; the node's HELDOUT_NODE_TOKEN):")
        typer.echo(token)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    from heldout.cli import main as _main

    _main()
