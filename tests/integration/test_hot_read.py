"""`read_one`, the leaderboard's hot read: on PostgreSQL it runs in autocommit (one round
trip, not BEGIN + read + ROLLBACK), and every pooled connection goes back transactional,
after a read, after a failed read, so that no later session runs without a transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import Integer, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError

from server.config import Settings
from server.db import get_engine, read_one, session_scope


def _pooled_autocommit(settings: Settings) -> list[bool]:
    """The autocommit flag of each idle connection in the pool (checked out together)."""
    pool = get_engine(settings).pool
    conns = [pool.connect() for _ in range(pool.checkedin())]
    try:
        return [bool(c.dbapi_connection.autocommit) for c in conns]  # type: ignore[union-attr]
    finally:
        for c in conns:
            c.close()


def test_a_hot_read_leaves_every_connection_transactional(settings: Settings) -> None:
    assert read_one(settings, select(bindparam("x", type_=Integer)), {"x": 42}) == (42,)
    with pytest.raises(DBAPIError):
        read_one(settings, select(text("no_such_column")), {})
    if get_engine(settings).dialect.name == "postgresql":
        # No BEGIN of its own: the statement is its transaction, started when it started.
        alone = select(func.transaction_timestamp() == func.statement_timestamp())
        assert read_one(settings, alone, {}) == (True,)
        assert _pooled_autocommit(settings) and not any(_pooled_autocommit(settings))
    # A session still rolls back what it did when it fails.
    with pytest.raises(RuntimeError), session_scope(settings) as session:
        session.execute(text("CREATE TABLE hot_read_probe (x integer)"))
        raise RuntimeError("undo")
    with session_scope(settings) as session:
        assert not get_engine(settings).dialect.has_table(session.connection(), "hot_read_probe")
