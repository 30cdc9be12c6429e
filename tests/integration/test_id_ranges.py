"""Ids past the databases' integer range (INTEGER keys: 32-bit on PostgreSQL) are refused
as input (422 naming the parameter) on every endpoint that takes one, the unauthenticated
push webhook included; before, the driver's OverflowError surfaced as a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.config import Settings
from tests.support.factories import auth, user_token

HUGE = [2**31, 2**63, 2**70]
ENDPOINTS = [
    ("post", "/api/v1/webhooks/push/{id}"),
    ("get", "/api/v1/submissions/{id}"),
    ("post", "/api/v1/submissions/{id}/cancel"),
    ("post", "/api/v1/submissions/{id}/renounce"),
    ("get", "/api/v1/submissions/{id}/jobs"),
    ("get", "/api/v1/submissions/{id}/artifacts"),
    ("get", "/api/v1/submissions/{id}/logs"),
    ("get", "/api/v1/submissions/1/logs?job={id}"),
    ("get", "/api/v1/jobs/{id}/logs"),
    ("post", "/api/v1/jobs/{id}/logs/refuse"),
    ("delete", "/api/v1/tokens/{id}"),
    ("get", "/api/v1/teams/{id}"),
    ("post", "/api/v1/team-invitations/{id}/accept"),
]


@pytest.mark.parametrize("value", HUGE)
def test_ids_past_signed_64_bit_are_422_not_500(
    api: TestClient, settings: Settings, value: int
) -> None:
    token = user_token(settings, "admin", admin=True)
    for method, template in ENDPOINTS:
        path = template.format(id=value)
        headers = {} if "webhooks" in path else auth(token)
        r = api.request(method, path, headers=headers)
        assert r.status_code == 422, (method, path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert "less than or equal to 2147483647" in r.json()["detail"], r.text


def test_the_largest_id_is_looked_up_and_not_found(api: TestClient, settings: Settings) -> None:
    token = user_token(settings, "alice")
    r = api.get(f"/api/v1/submissions/{2**31 - 1}", headers=auth(token))
    assert r.status_code == 404, r.text


def test_a_body_id_past_the_range_is_422(api: TestClient, settings: Settings) -> None:
    token = user_token(settings, "admin", admin=True)
    r = api.post(
        "/api/v1/challenges/x/phases/y/invitations", json={"team_id": 2**64}, headers=auth(token)
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "team_id"
