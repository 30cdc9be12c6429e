"""Engine, sessions and the declarative base. Routes and services never commit: the request
(or task) scope in `session_scope` commits once, or rolls back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import DateTime, MetaData, Select, create_engine, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from server import readers
from server.config import Settings, get_settings

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which drops the zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def make_engine(url: str, pool_size: int = 32, *, hot: bool = False) -> Engine:
    """An engine for sessions, or (`hot`) for `read_one`'s reads alone."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=8,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself so it can be BEGIN IMMEDIATE: SQLite then
            # serialises writers up front, which is what makes submission limits race-free.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers (the default) take the write lock up front; readers (`write=False`)
            # begin DEFERRED and, under WAL, never wait for a writer nor make one wait.
            mode = conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if hot:
        # Connections that only ever run one statement each in autocommit (one round trip,
        # no BEGIN, nothing to roll back on return) and are not pinged at checkout: the
        # ping is a round trip of its own, as dear as the read. A connection found dead
        # is replaced and the read retried (`read_one`). A read never waits long: not for
        # a lock (a migration's), an unanswered socket or a connection being made.
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=8,
            pool_reset_on_return=None,
            connect_args={"connect_timeout": 5, "tcp_user_timeout": 10_000},
        )

        @event.listens_for(engine, "connect")
        def _autocommit(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.autocommit = True
            dbapi_conn.execute(f"SET statement_timeout = {HOT_STATEMENT_TIMEOUT_MS}")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=8)


BEGIN_OPTION = "heldout_sqlite_begin"
HOT_STATEMENT_TIMEOUT_MS = 5000


_engines: dict[tuple[str, bool], Engine] = {}


def get_engine(settings: Settings | None = None, *, hot: bool = False) -> Engine:
    """The engine for sessions, or (`hot`) the one `read_one` reads with: a connection for
    each thread that may hold one, so no thread waits on the pool (the request threadpool
    and the background token toucher; the hot-path readers)."""
    settings = settings or get_settings()
    url = settings.sqlalchemy_url
    if (url, hot) not in _engines:
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        threads = readers.THREADS if hot else settings.server_threads + 1
        _engines[url, hot] = make_engine(url, threads, hot=hot)
    return _engines[url, hot]


def session_factory(
    settings: Settings | None = None, *, write: bool = True
) -> sessionmaker[Session]:
    engine = get_engine(settings)
    bind = engine if write else engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})
    return sessionmaker(bind=bind, expire_on_commit=False)


@event.listens_for(Session, "after_flush")
def _wrote_by_flush(session: Session, _ctx: Any) -> None:
    session.info["wrote"] = True


@event.listens_for(Session, "do_orm_execute")
def _wrote_by_statement(state: Any) -> None:
    if not state.is_select:
        state.session.info["wrote"] = True


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop("wrote", None)


@contextmanager
def no_transaction(session: Session) -> Iterator[None]:
    """Run slow work (a network call, long file I/O) with no transaction open: ends the
    session's transaction, which must only have read so far, so no lock (SQLite's write
    lock, PostgreSQL row locks) and no pooled connection is held meanwhile. The next
    statement begins a fresh transaction; objects already loaded stay usable. A unit that
    has written already keeps its transaction (its writes commit with the rest of it)."""
    if not (session.info.get("wrote") or session.new or session.dirty or session.deleted):
        session.commit()
    yield


@contextmanager
def session_scope(settings: Settings | None = None, *, write: bool = True) -> Iterator[Session]:
    """One unit of work: commit at the end, roll back on error (except errors that keep
    their changes, such as a recorded cooldown penalty). `write=False` for a unit that only
    reads: on SQLite it then takes no write lock (a write in it may fail when busy)."""
    from server.errors import HeldoutError

    settings = settings or get_settings()
    session = session_factory(settings, write=write)()
    session.info["settings"] = settings
    try:
        yield session
        session.commit()
    except HeldoutError as exc:
        if exc.keep_changes:
            session.commit()
        else:
            session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def read_one(
    settings: Settings, statement: Select[*tuple[Any, ...]], params: dict[str, Any]
) -> tuple[Any, ...] | None:
    """The first row of a read on a hot path, run straight on a DBAPI connection of the
    hot engine: the statement is compiled once per dialect and its columns converted by
    their types, as SQLAlchemy would, but without a Connection, whose per-execute
    bookkeeping (events, BEGIN, result metadata, ROLLBACK) costs ten times the indexed read
    itself on SQLite. It runs outside any transaction (autocommit: one statement is one
    consistent snapshot; no lock on SQLite). A connection that turns out dead (the hot
    engine does not ping at checkout) is dropped and the read tried once more on a new one."""
    engine = get_engine(settings, hot=True)
    sql, names, processors, values = _compiled(statement, engine.dialect)
    if values:  # the statement's own values, e.g. `func.f("literal")`
        params = {**values, **params}
    args: Any = tuple(params[n] for n in names) if names is not None else params
    try:
        row = _fetch_one(engine, sql, args)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        row = _fetch_one(engine, sql, args)  # once more, on a new connection
    if row is None:
        return None
    return tuple(v if f is None else f(v) for f, v in zip(processors, row, strict=True))


def _fetch_one(engine: Engine, sql: str, args: Any) -> Any:
    dbapi_error = engine.dialect.loaded_dbapi.Error
    conn = engine.raw_connection()
    try:
        cursor = None
        try:
            cursor = conn.cursor()
            cursor.execute(sql, args)
            return cursor.fetchone()
        except dbapi_error as exc:
            dead = engine.dialect.is_disconnect(exc, conn.dbapi_connection, cursor)
            if dead:
                conn.invalidate(exc)
            # As SQLAlchemy raises it (OperationalError for "database is locked"...).
            raise DBAPIError.instance(
                sql, args, exc, dbapi_error, connection_invalidated=dead
            ) from exc
        finally:
            if cursor is not None:
                cursor.close()
    finally:
        conn.close()  # back to the pool


@lru_cache(maxsize=32)
def _compiled(
    statement: Select[*tuple[Any, ...]], dialect: Dialect
) -> tuple[str, tuple[str, ...] | None, tuple[Callable[[Any], Any] | None, ...], dict[str, Any]]:
    """The statement's SQL for the dialect, its bind names in order (None: named style),
    each column's result processor and the values bound in the statement itself."""
    compiled = statement.compile(dialect=dialect)
    values = {k: v for k, v in compiled.params.items() if v is not None}
    names = tuple(compiled.positiontup or ()) if compiled.positional else None
    processors = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in statement.selected_columns
    )
    return compiled.string, names, processors, values
