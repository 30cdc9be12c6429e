"""`read_one`, the leaderboard's hot read: it runs on connections of its own (the hot
engine), in autocommit, one statement per read (no BEGIN, no ROLLBACK, no ping at
checkout), replaces a connection found dead and reads again, and leaves the sessions'
connections as they were: transactional."""

from __future__ import annotations

import pytest
from sqlalchemy import Integer, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError

from server.config import Settings
from server.db import get_engine, read_one, session_scope
from tests.support.statements import driver_statements

from ..conftest import ON_POSTGRES


def _pooled_autocommit(settings: Settings, *, hot: bool = False) -> list[bool]:
    """The autocommit flag of each idle connection in a pool (checked out together)."""
    pool = get_engine(settings, hot=hot).pool
    conns = [pool.connect() for _ in range(pool.checkedin())]  # type: ignore[attr-defined]
    try:
        return [bool(c.dbapi_connection.autocommit) for c in conns]  # type: ignore[union-attr]
    finally:
        for c in conns:
            c.close()


def test_a_hot_read_leaves_the_sessions_connections_transactional(settings: Settings) -> None:
    with session_scope(settings) as session:  # a session's connection, now back in its pool
        session.execute(text("SELECT 1"))
    assert read_one(settings, select(bindparam("x", type_=Integer)), {"x": 42}) == (42,)
    with pytest.raises(DBAPIError):
        read_one(settings, select(text("no_such_column")), {})
    if get_engine(settings).dialect.name == "postgresql":
        # No BEGIN of its own: the statement is its transaction, started when it started.
        alone = select(func.transaction_timestamp() == func.statement_timestamp())
        assert read_one(settings, alone, {}) == (True,)
        hot, sessions = _pooled_autocommit(settings, hot=True), _pooled_autocommit(settings)
        assert hot and all(hot) and sessions and not any(sessions), (hot, sessions)
    # A session still rolls back what it did when it fails.
    with pytest.raises(RuntimeError), session_scope(settings) as session:
        session.execute(text("CREATE TABLE hot_read_probe (x integer)"))
        raise RuntimeError("undo")
    with session_scope(settings) as session:
        assert not get_engine(settings).dialect.has_table(session.connection(), "hot_read_probe")


@ON_POSTGRES
def test_a_hot_read_is_one_statement_and_survives_a_dead_connection(settings: Settings) -> None:
    one = select(bindparam("x", type_=Integer))
    with driver_statements(get_engine(settings, hot=True)) as statements:
        for x in range(5):
            assert read_one(settings, one, {"x": x}) == (x,)
        # Five reads, five statements: no ping at checkout (BEGIN, which psycopg sends
        # outside the cursor, is ruled out by the transaction_timestamp check above).
        assert len(statements) == 5, statements
        # A read does not wait for long on a lock (a migration's, say).
        timeout = read_one(settings, select(func.current_setting("statement_timeout")), {})
        assert timeout == ("5s",)

        pid = read_one(settings, select(func.pg_backend_pid()), {})
        assert pid is not None
        with session_scope(settings) as session:  # the server restarts, say
            # Waits (up to 5 s) until that backend has gone.
            session.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid[0]})
        # The pooled connection is dead; the read is retried on a new one.
        assert read_one(settings, one, {"x": 7}) == (7,)
        again = read_one(settings, select(func.pg_backend_pid()), {})
        assert again is not None and again[0] != pid[0]
