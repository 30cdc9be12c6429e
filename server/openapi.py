"""The OpenAPI document declares every response the API gives: each operation's error
statuses, all rendered as problem responses (application/problem+json, RFC 9457), and the
503 a busy or unreachable database gets."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM = "application/problem+json"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["title", "status"],
    "properties": {
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}

ERRORS = {
    "400": "bad request (the detail names what was wrong)",
    "401": "missing, unknown or revoked token, or a webhook signature that does not match",
    "403": "the token's user may not do this",
    "404": "no such resource (or not visible to this user)",
    "409": "conflicts with the resource's current state",
    "413": "payload too large",
    "422": "invalid input: `field` and `errors` name each invalid parameter",
    "429": "refused by a submission rule; Retry-After says when to try again",
    "503": "the database is busy or unavailable; retry after Retry-After seconds",
}
BEARER: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "an API token from `POST /api/v1/tokens` or `heldout login`",
}
# Worker nodes' endpoints take a node token in a header of their own, never a user's token.
NODE_TOKEN: dict[str, Any] = {
    "type": "apiKey",
    "in": "header",
    "name": "X-Heldout-Node-Token",
    "description": "a node token from `heldout node-token create` or `POST /api/v1/nodes/tokens`",
}
NODE_PATHS = "/api/v1/node/"
# Operations that take no API token: the health check, and the push webhook (it is signed
# with the link's HMAC secret instead).
PUBLIC = [("/api/v1/health", "get"), ("/api/v1/webhooks/push/{link_id}", "post")]
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


def install(app: FastAPI) -> None:
    """Replace app.openapi with one that adds the error responses to every operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        # The API token travels as a bearer header; declaring it lets the docs' Authorize
        # button send it with every "Try it out".
        schema["components"]["securitySchemes"] = {"token": BEARER, "node": NODE_TOKEN}
        schema["security"] = [{"token": []}]
        for path, method in PUBLIC:
            schema["paths"].get(path, {}).get(method, {})["security"] = []
        for path, item in schema["paths"].items():
            if path.startswith(NODE_PATHS):
                for operation in item.values():
                    operation["security"] = [{"node": []}]
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                for code, description in ERRORS.items():
                    entry: dict[str, Any] = {
                        "description": description,
                        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    }
                    if code in ("429", "503"):
                        entry["headers"] = RETRY_AFTER
                    # FastAPI's own 422 (HTTPValidationError, application/json) is not what
                    # the handler renders; the others keep a route's own description.
                    if code == "422" or code not in responses:
                        responses[code] = entry
                    else:
                        responses[code].setdefault("content", entry["content"])
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI, assets: str) -> None:
    """Swagger UI at /api/v1/docs from files the server ships (under `assets`), not a CDN,
    so the docs work on a machine with no internet. The page around it is ours: a language,
    one main landmark and a heading, and a stylesheet that lifts Swagger's low-contrast
    greys (server/web/vendor/docs.css)."""
    from fastapi.responses import HTMLResponse

    page = DOCS_PAGE.replace("{assets}", assets)

    def docs() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_api_route("/api/v1/docs", docs, include_in_schema=False, methods=["GET"])


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>heldout API</title>
<link rel="icon" href="/favicon.svg">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="stylesheet" href="{assets}/docs.css">
</head>
<body>
<main>
<h1 class="docs-title">heldout API</h1>
<div id="swagger-ui"></div>
</main>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: false,  // its links sit inside the summary buttons (nested controls)
  persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
</script>
</body>
</html>
"""
