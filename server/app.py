"""The FastAPI application: routers under /api/v1, errors rendered as problem responses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from server import openapi
from server.accounts.endpoints import router as accounts_router
from server.analysis.endpoints import router as analysis_router
from server.challenges.endpoints import router as challenges_router
from server.codebases.endpoints import router as codebases_router
from server.config import Settings, get_settings
from server.errors import HeldoutError, RuleViolation
from server.jobs.endpoints import router as jobs_router
from server.leaderboards.endpoints import router as leaderboards_router
from server.leaderboards.lane import HeldBoards
from server.leaderboards.task_endpoints import router as task_boards_router
from server.nodes.endpoints import router as nodes_router
from server.submissions.endpoints import router as submissions_router
from server.teams.endpoints import router as teams_router
from server.uploads.endpoints import router as uploads_router

PROBLEM = "application/problem+json"
DB_RETRY_AFTER_S = 5
# On SIGTERM, requests in flight get this long; then they are abandoned (their clients
# have a retry; their transactions roll back).
SHUTDOWN_GRACE_S = 3
log = logging.getLogger(__name__)
WEB = Path(__file__).resolve().parent / "web"


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def create_app(settings: Settings | None = None) -> FastAPI:
    # long: every router, handler and middleware registered in one place
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # As many threads for sync endpoints as the database pool has connections.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.server_threads
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="heldout",
        version="0.1.0",
        description="Challenges whose test and training data never leave the organizers' machines.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served by openapi.install_docs from local files
        redoc_url=None,
    )
    app.state.settings = settings

    @app.exception_handler(HeldoutError)
    async def _heldout_error(_: Request, exc: HeldoutError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RuleViolation) and exc.next_allowed_at is not None:
            from server.db import utcnow

            wait = max(0, int((exc.next_allowed_at - utcnow()).total_seconds()))
            headers["Retry-After"] = str(wait)
        return JSONResponse(
            exc.problem(), status_code=exc.status_code, media_type=PROBLEM, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        body = {
            "title": "Invalid request",
            "status": 422,
            "detail": detail,
            "field": errors[0]["field"] if errors else None,
            "errors": errors,
        }
        return JSONResponse(body, status_code=422, media_type=PROBLEM)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _database_busy(_: Request, exc: Exception) -> JSONResponse:
        # SQLite's "database is locked" past busy_timeout, a PostgreSQL lock or connection
        # failure, an exhausted pool: the request may succeed later, so 503, not 500.
        log.warning("database unavailable: %s", str(exc).splitlines()[0][:200])
        body = {
            "title": "Service unavailable",
            "status": 503,
            "detail": "the database is busy or unavailable; retry in a few seconds",
        }
        headers = {"Retry-After": str(DB_RETRY_AFTER_S)}
        return JSONResponse(body, status_code=503, media_type=PROBLEM, headers=headers)

    @app.get("/api/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    for router in (
        accounts_router,
        challenges_router,
        teams_router,
        uploads_router,
        submissions_router,
        jobs_router,
        leaderboards_router,
        task_boards_router,
        analysis_router,
        codebases_router,
        nodes_router,
    ):
        app.include_router(router, prefix="/api/v1")
    # In front of routing: looks at a held, current board skip FastAPI's per-request work.
    app.add_middleware(HeldBoards, settings=settings)
    openapi.install(app)
    openapi.install_docs(app, "/vendor")
    # The participant page: static files that use the API above, nothing server-rendered.
    app.mount("/", StaticFiles(directory=WEB, html=True), name="web")
    return app
