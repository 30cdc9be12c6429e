"""Artifacts reach worker nodes by digest through the server: a node token (created by an
administrator, stored as a hash) opens `GET/PUT /api/v1/node/artifacts/{digest}`, and no
user's token does; what a node sends back is stored only if it hashes to its digest."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient

from server.config import Settings
from server.db import session_scope
from server.nodes.models import NodeToken
from server.storage import ArtifactStore
from tests.support.factories import auth, user_token

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
