from __future__ import annotations

from alembic import context

from server.config import get_settings
from server.db import get_engine
from server.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    # A caller (tests, `heldout server`) may hand over a connection; else use the settings.
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    with get_engine(get_settings()).connect() as conn:
        _run(conn)
        conn.commit()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()
