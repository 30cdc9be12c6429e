"""Artifacts reach worker nodes by digest through the server: a node token (created by an
administrator, stored as a hash) opens `GET/PUT /api/v1/node/artifacts/{digest}`, and no
user's token does; what a node sends back is stored only if it hashes to its digest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.nodes.models import NodeToken
from server.storage import ArtifactStore
from tests.support.factories import auth, user_token
from tests.support.workers import live_server
from worker.artifacts import ArtifactMissing, cache_bytes, store_for
from worker.steps import InfrastructureError

HEADER = "X-Heldout-Node-Token"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def node_token(api: TestClient, settings: Settings, name: str = "node-a") -> str:
    admin = user_token(settings, "root", admin=True)
    r = api.post("/api/v1/nodes/tokens", json={"name": name}, headers=auth(admin))
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert token.startswith("hldn_")
    return str(token)


def test_an_admin_creates_a_node_token_stored_only_as_a_hash(
    api: TestClient, settings: Settings
) -> None:
    token = node_token(api, settings)
    with session_scope(settings) as session:
        (row,) = session.query(NodeToken).all()
        assert row.name == "node-a" and row.created_by == "root"
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in (row.token_hash, row.prefix)
    # Participants and organizers may not: a node token reads every challenge's data.
    ann = user_token(settings, "ann")
    r = api.post("/api/v1/nodes/tokens", json={"name": "mine"}, headers=auth(ann))
    assert r.status_code == 403 and "administrators" in r.json()["detail"]
    assert api.post("/api/v1/nodes/tokens", json={"name": "x"}).status_code == 401


def test_only_a_node_token_fetches_an_artifact_by_digest(
    api: TestClient, settings: Settings
) -> None:
    data = b"case file bytes " * 1000
    digest = ArtifactStore(settings.artifacts_path).put_bytes(data)
    token = node_token(api, settings)
    r = api.get(f"/api/v1/node/artifacts/{digest}", headers={HEADER: token})
    assert r.status_code == 200 and r.content == data
    missing = digest_of(b"nobody stored this")
    r = api.get(f"/api/v1/node/artifacts/{missing}", headers={HEADER: token})
    assert r.status_code == 404
    r = api.get("/api/v1/node/artifacts/sha256:..%2F..%2Fheldout.db", headers={HEADER: token})
    assert r.status_code == 404

    # No credential, a wrong one, or a user's token (participant, organizer, even admin).
    url = f"/api/v1/node/artifacts/{digest}"
    assert api.get(url).status_code == 401
    assert api.get(url, headers={HEADER: "hldn_not-a-token"}).status_code == 401
    admin = user_token(settings, "root", admin=True)
    for user in (user_token(settings, "ann"), admin):
        assert api.get(url, headers=auth(user)).status_code == 401
        assert api.get(url, headers={HEADER: user}).status_code == 401
    # A node token opens nothing else.
    assert api.get("/api/v1/nodes", headers=auth(token)).status_code == 401

    # A revoked token no longer works.
    with session_scope(settings) as session:
        (row,) = session.query(NodeToken).all()
        token_id = row.id
    assert api.delete(f"/api/v1/nodes/tokens/{token_id}", headers=auth(admin)).status_code == 204
    assert api.get(url, headers={HEADER: token}).status_code == 401


def test_an_output_sent_back_is_stored_only_if_it_matches_its_digest(
    api: TestClient, settings: Settings
) -> None:
    store = ArtifactStore(settings.artifacts_path)
    token = node_token(api, settings)
    data = b"prediction " * 5000
    digest = digest_of(data)
    r = api.put(f"/api/v1/node/artifacts/{digest}", content=data, headers={HEADER: token})
    assert r.status_code == 200, r.text
    assert r.json() == {"digest": digest, "size": len(data)}
    assert store.read_bytes(digest) == data
    # Sending it again is harmless.
    r = api.put(f"/api/v1/node/artifacts/{digest}", content=data, headers={HEADER: token})
    assert r.status_code == 200

    other = digest_of(b"what the node claimed")
    r = api.put(f"/api/v1/node/artifacts/{other}", content=b"tampered", headers={HEADER: token})
    assert r.status_code == 400, r.text
    assert "nothing was stored" in r.json()["detail"]
    assert not store.exists(other) and not store.exists(digest_of(b"tampered"))
    assert not list((settings.artifacts_path / "tmp").iterdir())

    # Only nodes send artifacts.
    ann = user_token(settings, "ann")
    assert api.put(f"/api/v1/node/artifacts/{other}", content=b"x").status_code == 401
    r = api.put(f"/api/v1/node/artifacts/{other}", content=b"x", headers=auth(ann))
    assert r.status_code == 401
    r = api.put("/api/v1/node/artifacts/sha256:zz", content=b"x", headers={HEADER: token})
    assert r.status_code == 404


def test_a_node_with_no_shared_directory_reads_and_writes_through_the_server(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """worker.artifacts.RemoteStore against a real uvicorn: inputs fetched into the node's
    cache and verified, outputs sent back, damaged content refused."""
    server_store = ArtifactStore(settings.artifacts_path)
    case = b"a CT volume " * 20_000
    case_digest = server_store.put_bytes(case)
    damaged = server_store.put_bytes(b"ground truth")
    path = server_store.path(damaged)  # the server's copy rots on disk
    os.chmod(path, 0o644)
    path.write_bytes(b"ground truth, altered")
    token = node_token(api, settings)
    with live_server(create_app(settings)) as url:
        node = Settings(data_dir=tmp_path / "node", node_server_url=url, node_token=token)
        assert node.artifacts_path != settings.artifacts_path
        with store_for(node) as store:
            local = store.path(case_digest)
            assert local.read_bytes() == case and local.is_relative_to(node.node_cache_path)
            assert store.path(case_digest) == local  # held for the job: fetched once
            store.copy_to(case_digest, tmp_path / "work" / "case.mha")
            assert (tmp_path / "work" / "case.mha").read_bytes() == case

            out = tmp_path / "work" / "prediction.json"
            out.write_text('{"probability": 0.7}')
            digest, size = store.put_file(out)
            assert (
                server_store.read_bytes(digest) == out.read_bytes() and size == out.stat().st_size
            )
            log_digest = store.put_bytes(b"the run's log")
            assert server_store.read_bytes(log_digest) == b"the run's log"

            with pytest.raises(InfrastructureError, match="damaged"):
                store.path(damaged)
            assert not store.cache.has(damaged)
            missing = digest_of(b"nobody stored this")
            assert not store.exists(missing)
            with pytest.raises(ArtifactMissing):
                store.path(missing)
        assert cache_bytes(node) == len(case)

        # A user's token is no node credential.
        user = Settings(data_dir=tmp_path / "user", node_server_url=url,
                        node_token=user_token(settings, "root", admin=True))  # fmt: skip
        with store_for(user) as store, pytest.raises(InfrastructureError, match="401"):
            store.path(case_digest)


def test_a_node_server_url_needs_a_node_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HELDOUT_NODE_TOKEN"):
        Settings(data_dir=tmp_path, node_server_url="http://127.0.0.1:8000")
