"""The leaderboard's fast lane: a GET of a phase's leaderboard or statistics whose stored
board this process holds, current as the database says now, is answered here, in front
of FastAPI's routing, dependency solving and response classes, which cost more than the
rest of such a request together (see bench/bench_leaderboard.py). Anything else (no
token, no board held, a newer generation, an unknown token or phase, a database error,
a reader held up for a second) goes on to the routes in endpoints.py, which answer or
raise as every endpoint does."""

from __future__ import annotations

import re
from functools import partial

from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import readers
from server.accounts import service as accounts
from server.config import Settings
from server.leaderboards import boards

# Starlette's `{challenge}` and `{phase}` path parameters match one segment each.
BOARD_PATH = re.compile(r"/api/v1/challenges/([^/]+)/phases/([^/]+)/leaderboard(/statistics)?")
CACHE_CONTROL = "private, no-cache"


def not_modified(tag: str, if_none_match: str) -> bool:
    """Whether an If-None-Match header names this ETag (weak or strong) or is `*`."""
    sent = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return tag in sent or if_none_match.strip() == "*"


class HeldBoards:
    """ASGI middleware serving held boards (one indexed read in a reader thread, no ORM)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            found = BOARD_PATH.fullmatch(path[len(root) :] if path.startswith(root) else path)
            if found is not None:
                token, if_none_match = _headers(scope)
                if token and await self._serve(found, token, if_none_match, send):
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, found: re.Match[str], token: str, if_none_match: str, send: Send
    ) -> bool:
        """Answer from the held board; False if there is none to answer from."""
        challenge, phase, statistics = found.groups()
        try:
            held = await readers.run(
                partial(boards.served, self.settings, accounts.hash_token(token), challenge, phase)
            )
        except SQLAlchemyError:
            return False  # the full path meets the same error and renders it (503)
        except readers.Late:
            return False  # the reader is held up (a hung read): the full path answers
        if held is None:
            return False
        tag = f'"{held.etag}"'
        headers = [(b"etag", tag.encode()), (b"cache-control", CACHE_CONTROL.encode())]
        if if_none_match and not_modified(tag, if_none_match):
            await send(_start(304, headers))
            await send({"type": "http.response.body", "body": b""})
            return True
        body = held.statistics_bytes if statistics else held.leaderboard_bytes
        headers += [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send(_start(200, headers))
        await send({"type": "http.response.body", "body": body})
        return True


def _start(status: int, headers: list[tuple[bytes, bytes]]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers}


def _headers(scope: Scope) -> tuple[str | None, str]:
    """The bearer token (as `server.deps.bearer_token` reads it) and If-None-Match, each
    from its first header, as Starlette's `Request.headers` gives them."""
    wanted: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in (b"authorization", b"if-none-match"):
            wanted.setdefault(name, value)
    scheme, _, token = wanted.get(b"authorization", b"").decode("latin-1").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    return token or None, wanted.get(b"if-none-match", b"").decode("latin-1")
