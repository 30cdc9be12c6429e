from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime, utcnow


class Node(Base):
    """A machine running heldout workers, by the name it registered with
    (`heldout worker --node-name`); its row is refreshed on every reaper tick."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    devices: Mapped[list[str]] = mapped_column(JSON, default=list)
    free_disk_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GpuLease(Base):
    """A GPU device of a node held by one job. A row exists only while the lease is held,
    and (node, device) is its primary key: two holders of one device cannot both commit."""

    __tablename__ = "gpu_leases"

    node: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign key: a lease is taken while its job is still pending, and a lease left by
    # a deleted job is reclaimed by its stopped heartbeat like any other.
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    leased_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NodeToken(Base):
    """A worker node's credential for the node-only endpoints (artifacts by digest). Only a
    SHA-256 of the token is stored; the token itself is shown once, when created."""

    __tablename__ = "node_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # No foreign key: a token outlives the account of the administrator who created it.
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
