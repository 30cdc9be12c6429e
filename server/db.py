"""Engine, sessions and the declarative base. Routes and services never commit: the request
(or task) scope in `session_scope` commits once, or rolls back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

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


def make_engine(url: str, pool_size: int = 32) -> Engine:
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
    # One connection per thread that may hold a session (the server's threadpool, the
    # background toucher), so no thread waits on the pool: see Settings.server_threads.
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=8)


BEGIN_OPTION = "heldout_sqlite_begin"


_engines: dict[str, Engine] = {}


def get_engine(settings: Settings | None = None) -> Engine:
    settings = settings or get_settings()
    url = settings.sqlalchemy_url
    if url not in _engines:
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        _engines[url] = make_engine(url, settings.server_threads)
    return _engines[url]


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


@contextmanager
def read_connection(settings: Settings) -> Iterator[Connection]:
    """A Core connection for one read on a hot path, without an ORM session: on SQLite its
    transaction begins DEFERRED (no write lock), and it is rolled back when done."""
    engine = get_engine(settings).execution_options(**{BEGIN_OPTION: "DEFERRED"})
    with engine.connect() as conn:
        yield conn
