"""HTTP client for the CLI: the REST API with a token, uploads in resumable chunks."""

from __future__ import annotations

import base64
import hashlib
import time
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

    def download(self, path: str) -> bytes:
        """The body of a GET as bytes (a file the API serves), errors as ApiError."""
        resp = self.http.get(path, timeout=httpx.Timeout(600.0, connect=10.0))
        if resp.status_code >= 400:
            self._check(resp)
        return resp.content

    def post(self, path: str, json: Any = None) -> Any:
        return self._check(self.http.post(path, json=json))

    def upload(
        self,
        path: Path,
        progress: Callable[[int, int], None] | None = None,
        chunk_bytes: int = 8 * 1024 * 1024,
        retries: int = 5,
    ) -> dict[str, Any]:
        """Upload a file in chunks, each with its SHA-256 (Upload-Checksum). Declaring the
        file's digest makes the server resume an open upload of the same file (a re-run
        after an interruption) or answer at once for content you uploaded before. After a
        failed or refused chunk, asks the server for its offset and resumes there; gives up
        after `retries` failures in a row without progress."""
        size = path.stat().st_size
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1024 * 1024):
                h.update(block)
        digest = "sha256:" + h.hexdigest()
        up: dict[str, Any] = self.post(
            "/uploads", {"filename": path.name, "size": size, "sha256": digest}
        )
        failures = 0
        with path.open("rb") as f:
            while up["status"] != "complete":
                offset = up["received"]
                if progress:
                    progress(offset, size)
                f.seek(offset)
                data = f.read(chunk_bytes)
                try:
                    up = self._put_chunk(up["key"], offset, data)
                    failures = 0
                except (httpx.TransportError, ApiError) as exc:
                    if isinstance(exc, ApiError) and not _resumable(exc):
                        raise
                    failures += 1
                    if failures > retries:
                        raise
                    time.sleep(min(0.25 * 2**failures, 10.0))
                    up = self.get(f"/uploads/{up['key']}")
        if progress:
            progress(size, size)
        return up

    def _put_chunk(self, key: str, offset: int, data: bytes) -> dict[str, Any]:
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        return dict(
            self._check(
                self.http.put(
                    f"/uploads/{key}",
                    params={"offset": offset},
                    content=data,
                    headers={"Upload-Checksum": f"sha256 {checksum}"},
                    timeout=httpx.Timeout(600.0, connect=10.0),
                )
            )
        )


def _resumable(exc: ApiError) -> bool:
    """A 409 about the chunk (offset, a cut-off or damaged chunk, a concurrent one) is
    resumed from the server's offset; one about the whole file's digest is final."""
    return exc.status == 409 and exc.body.get("field") in ("offset", "upload_checksum")
