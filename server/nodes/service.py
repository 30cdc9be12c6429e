"""Nodes register and heartbeat; GPU devices are leased per node in the database.

A lease is one row per (node, device), inserted in a savepoint: when two workers (threads,
prefork processes, nodes) race for one device, the database lets exactly one insert commit
and the other gets an integrity error and takes nothing. A lease whose holder stops
heartbeating, or whose node does, is reclaimed by any node's reaper.

A node proves itself to the node-only endpoints with a node token (`hldn_<random>`, sent
in `X-Heldout-Node-Token`); only its SHA-256 is stored, as for user tokens. User tokens
and node tokens are separate tables: neither opens the other's endpoints."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.db import utcnow
from server.errors import InvalidInput, NotFound, NotPermitted, Unauthorized
from server.jobs.models import Job
from server.jobs.states import JobStatus
from server.nodes.models import GpuLease, Node, NodeToken

NODE_TOKEN_PREFIX = "hldn_"
NODE_TOKEN_HEADER = "X-Heldout-Node-Token"
# A node silent for longer than this is shown as not alive.
ALIVE_WITHIN = timedelta(minutes=2)


def register(
    session: Session,
    name: str,
    *,
    queues: Sequence[str],
    devices: Sequence[str],
    free_disk_bytes: int,
    cache_bytes: int,
) -> Node:
    """Create the node's row, or refresh it for a restarted worker (started anew)."""
    if not name.strip():
        raise ValueError("a node name must not be empty")
    now = utcnow()
    node = get(session, name)
    if node is None:
        node = Node(name=name)
        session.add(node)
    node.queues, node.devices = list(queues), list(devices)
    node.free_disk_bytes, node.cache_bytes = free_disk_bytes, cache_bytes
    node.heartbeat_at = node.started_at = now
    session.flush()
    return node


def heartbeat(session: Session, name: str, *, free_disk_bytes: int, cache_bytes: int) -> bool:
    """False when the node has no row (it must register first)."""
    res = session.execute(
        update(Node)
        .where(Node.name == name)
        .values(heartbeat_at=utcnow(), free_disk_bytes=free_disk_bytes, cache_bytes=cache_bytes)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def get(session: Session, name: str) -> Node | None:
    return session.scalar(select(Node).where(Node.name == name))


def list_nodes(session: Session) -> list[Node]:
    return list(session.scalars(select(Node).order_by(Node.name)))


def silent_nodes(session: Session, since: datetime) -> list[str]:
    """Nodes with no heartbeat since `since`."""
    return list(session.scalars(select(Node.name).where(Node.heartbeat_at < since)))


def describe(node: Node, running_jobs: int = 0) -> dict[str, Any]:
    return {
        "name": node.name,
        "queues": list(node.queues),
        "devices": list(node.devices),
        "free_disk_bytes": node.free_disk_bytes,
        "cache_bytes": node.cache_bytes,
        "heartbeat_at": node.heartbeat_at,
        "started_at": node.started_at,
        "alive": node.heartbeat_at >= utcnow() - ALIVE_WITHIN,
        "running_jobs": running_jobs,
    }


def overview(session: Session) -> list[dict[str, Any]]:
    running = dict(
        session.execute(
            select(Job.node, func.count())
            .where(Job.status == JobStatus.running.value, Job.node.is_not(None))
            .group_by(Job.node)
        ).all()
    )
    return [describe(n, int(running.get(n.name, 0))) for n in list_nodes(session)]


# --- GPU leases ------------------------------------------------------------------------


def leases(session: Session, node: str) -> dict[str, int]:
    """The node's leased devices and the job holding each."""
    rows = session.execute(select(GpuLease.device, GpuLease.job_id).where(GpuLease.node == node))
    return {device: job_id for device, job_id in rows}


def leases_of(session: Session, job_id: int) -> list[GpuLease]:
    return list(session.scalars(select(GpuLease).where(GpuLease.job_id == job_id)))


def lease(
    session: Session, node: str, devices: Sequence[str], count: int, *, job_id: int
) -> list[str] | None:
    """Lease `count` of the node's `devices` for the job, all or none; None when too few are
    free (or another worker took one first). A job that already holds leases gets them."""
    held = sorted(lease.device for lease in leases_of(session, job_id) if lease.node == node)
    if len(held) >= count:
        return held[:count]
    busy = set(leases(session, node))
    free = [d for d in devices if d not in busy]
    if len(free) < count:
        return None
    mine = free[:count]
    now = utcnow()
    try:
        with session.begin_nested():
            session.add_all(
                GpuLease(node=node, device=d, job_id=job_id, leased_at=now, heartbeat_at=now)
                for d in mine
            )
    except IntegrityError:  # another worker committed one of these first
        return None
    return mine


def renew(session: Session, job_id: int) -> int:
    """The holder is alive: its leases stay. Returns how many it holds."""
    res = session.execute(
        update(GpuLease)
        .where(GpuLease.job_id == job_id)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(res.rowcount)  # type: ignore[attr-defined]


def release(session: Session, job_id: int) -> None:
    session.execute(
        delete(GpuLease)
        .where(GpuLease.job_id == job_id)
        .execution_options(synchronize_session=False)
    )


def reclaim_stale(session: Session, stale_before: datetime) -> list[tuple[str, str]]:
    """Remove leases whose holder, or whose node, has not heartbeaten since `stale_before`;
    returns the (node, device) pairs freed."""
    dead_nodes = select(Node.name).where(Node.heartbeat_at < stale_before)
    stale = list(
        session.scalars(
            select(GpuLease)
            .where((GpuLease.heartbeat_at < stale_before) | GpuLease.node.in_(dead_nodes))
            .order_by(GpuLease.node, GpuLease.device)
        )
    )
    for row in stale:
        session.delete(row)
    session.flush()
    return [(row.node, row.device) for row in stale]


# --- node credentials ------------------------------------------------------------------


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, creator: User | None, name: str) -> tuple[NodeToken, str]:
    """A new node token; returns the row and the token, which is shown only now. Only
    administrators (or None: an operator at the installation's database, the CLI): a node
    reads every challenge's artifacts, private test sets included."""
    if creator is not None and not creator.is_admin:
        raise NotPermitted("only administrators may create node tokens")
    if not name.strip():
        raise InvalidInput("a node token needs a name (the node or group it is for)", field="name")
    token = NODE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = NodeToken(name=name.strip()[:100], prefix=token[:12], token_hash=_hash(token),
                    created_by=creator.username if creator else "cli")  # fmt: skip
    session.add(row)
    session.flush()
    return row, token


def revoke_token(session: Session, revoker: User, token_id: int) -> None:
    if not revoker.is_admin:
        raise NotPermitted("only administrators may revoke node tokens")
    row = session.get(NodeToken, token_id)
    if row is None:
        raise NotFound(f"no node token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()


def authenticate_node(session: Session, token: str | None) -> NodeToken:
    if not token:
        raise Unauthorized(f"a node token is required: '{NODE_TOKEN_HEADER}: hldn_...'")
    row = session.scalar(select(NodeToken).where(NodeToken.token_hash == _hash(token)))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("the node token is unknown or revoked")
    return row
