"""The embedded default set-up: a redis-server on a socket in the data directory, started by
the CLI when HELDOUT_REDIS_URL is unset, and migrations applied at start."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from alembic import command
from alembic.config import Config

from server.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def ensure_redis(settings: Settings) -> bool:
    """Start the embedded redis-server unless one answers (or HELDOUT_REDIS_URL is set);
    True when this call started it, so that its caller stops it (`stop_redis`)."""
    if settings.redis_url:
        return False
    import redis

    sock = settings.embedded_redis_socket
    client = redis.Redis(unix_socket_path=str(sock))
    try:
        client.ping()
        return False
    except redis.RedisError:
        pass
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit(
            "HELDOUT_REDIS_URL is unset and redis-server is not installed: "
            "install it (apt-get install redis-server) or point HELDOUT_REDIS_URL at a Redis"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    subprocess.run(
        [
            exe,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--pidfile",
            str(settings.data_dir.resolve() / "redis.pid"),
            "--logfile",
            str(settings.data_dir.resolve() / "redis.log"),
        ],
        check=True,
    )
    for _ in range(100):
        try:
            client.ping()
            return True
        except redis.RedisError:
            time.sleep(0.05)
    raise SystemExit(f"embedded redis-server did not answer on {sock}")


def stop_redis(settings: Settings) -> None:
    """Stop the embedded redis-server (daemonized, so no signal of ours reaches it)."""
    import redis

    try:
        redis.Redis(unix_socket_path=str(settings.embedded_redis_socket)).shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # shutting down closes the connection: that is the answer
    except redis.RedisError:
        pid = settings.data_dir / "redis.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)


def alembic_config(settings: Settings) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    return cfg


def has_database(settings: Settings) -> bool:
    """Whether this installation's database exists and has been migrated (a SQLite file in
    the data directory, or a server database with alembic's version table)."""
    import sqlalchemy

    from server.db import get_engine

    if settings.database_url is None and not (settings.data_dir / "heldout.db").exists():
        return False  # asking SQLite would create the file
    try:
        with get_engine(settings).connect() as conn:
            return sqlalchemy.inspect(conn).has_table("alembic_version")
    except sqlalchemy.exc.OperationalError:
        return False


def migrate(settings: Settings) -> None:
    from server.db import get_engine

    cfg = alembic_config(settings)
    with get_engine(settings).connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()
