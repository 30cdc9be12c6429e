"""HTTP client for the CLI: the REST API with a token, uploads in resumable chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from server.config import Settings


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        detail = body.get("detail") or body
        field = body.get("field")
        super().__init__(f"{status}: {detail}" + (f" (field: {field})" if field else ""))


class Client:
    def __init__(self, settings: Settings, token: str | None = None) -> None:
        self.settings = settings
        headers = {}
        token = token or settings.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            base_url=settings.api_url.rstrip("/") + "/api/v1",
            headers=headers,
            timeout=httpx.Timeout(60.0, connect=10.0),
        )

    def _check(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"detail": resp.text[:500]}
            raise ApiError(resp.status_code, body)
        if resp.status_code == 204:
            return None
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self._check(self.http.get(path, params=params))

    def post(self, path: str, json: Any = None) -> Any:
        return self._check(self.http.post(path, json=json))

    def upload(
        self,
        path: Path,
        progress: Callable[[int, int], None] | None = None,
        chunk_bytes: int = 8 * 1024 * 1024,
        retries: int = 5,
    ) -> dict[str, Any]:
        """Upload a file in chunks; resumes from the server's offset after a failed chunk,
        and sends nothing when the server already holds the same content."""
        size = path.stat().st_size
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1024 * 1024):
                h.update(block)
        digest = "sha256:" + h.hexdigest()
        up = self.post("/uploads", {"filename": path.name, "size": size, "sha256": digest})
        failures = 0
        with path.open("rb") as f:
            while up["status"] != "complete":
                offset = up["received"]
                if progress:
                    progress(offset, size)
                f.seek(offset)
                data = f.read(chunk_bytes)
                try:
                    up = self._check(
                        self.http.put(
                            f"/uploads/{up['key']}",
                            params={"offset": offset},
                            content=data,
                            timeout=httpx.Timeout(600.0, connect=10.0),
                        )
                    )
                except (httpx.TransportError, ApiError) as exc:
                    if isinstance(exc, ApiError) and exc.status != 409:
                        raise
                    failures += 1
                    if failures > retries:
                        raise
                    up = self.get(f"/uploads/{up['key']}")
        if progress:
            progress(size, size)
        return up
