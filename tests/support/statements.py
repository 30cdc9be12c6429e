"""What a test's code sends through the database driver, seen below SQLAlchemy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event


@contextmanager
def driver_statements(*engines: Any) -> Iterator[list[str]]:
    """Every statement request threads send through the database driver on the engines'
    connections, whether or not through SQLAlchemy, the pool's liveness ping on checkout
    included (`;` on PostgreSQL; left out: the background token toucher's own writes); the
    engines' connections are closed afterwards."""
    seen: list[str] = []

    def note(statement: str) -> None:
        if threading.current_thread().name != "token-touch":
            seen.append(statement)

    def hook(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if engines[0].dialect.name == "sqlite":
            dbapi_conn.set_trace_callback(note)
        else:
            import psycopg

            class Noting(psycopg.Cursor[Any]):
                def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                    note(str(query))
                    return super().execute(query, *args, **kwargs)

            dbapi_conn.cursor_factory = Noting

    for engine in engines:
        engine.dispose()  # connections made from now on, each hooked when it is checked out
        event.listen(engine, "checkout", hook)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "checkout", hook)
            engine.dispose()
