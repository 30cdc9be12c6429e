"""The web application and the API docs ship their own files: no page refers to another
host, the vendored scripts are served, and the OpenAPI document declares the token scheme
(so the docs' Authorize button works)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

EXTERNAL = re.compile(r"""(?:src|href)=["']?(?:https?:)?//""")


def test_pages_use_only_local_files(api: TestClient) -> None:
    for path in ("/", "/api/v1/docs"):
        r = api.get(path)
        assert r.status_code == 200, path
        assert not EXTERNAL.search(r.text), f"{path} loads something from another host"
    docs = api.get("/api/v1/docs").text
    for asset in ("/vendor/swagger-ui-bundle.js", "/vendor/swagger-ui.css"):
        assert asset in docs
    for asset in (
        "/vendor/vega.min.js",
        "/vendor/vega-lite.min.js",
        "/vendor/vega-embed.min.js",
        "/vendor/swagger-ui-bundle.js",
        "/vendor/swagger-ui.css",
        "/app.js",
        "/plots.js",
        "/favicon.svg",
    ):
        r = api.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset


def test_openapi_declares_the_token_scheme(api: TestClient) -> None:
    spec = api.get("/api/v1/openapi.json").json()
    assert spec["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token from `POST /api/v1/tokens` or `heldout login`",
    }
    assert spec["security"] == [{"token": []}]
    assert spec["paths"]["/api/v1/health"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/api/v1/me"]["get"]  # the default: a token
