"""`heldout.Client`: the REST API of a heldout server, typed, for participants and organizers.

    client = Client("https://heldout.example.org", token="hld_...")
    sub = client.submit("stoic", "qualification", image=Path("algo.tar"))
    sub = client.wait(sub["id"])

Light on purpose: httpx and the standard library; none of the server's dependencies.
`submit` refuses what the server would refuse (unknown or closed phase, used quota, a file
that is not an image archive, a root or non-amd64 image) before uploading a byte.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from heldout.archive import IntakeError, inspect_archive

FINAL = frozenset({"succeeded", "failed", "cancelled"})
Progress = Callable[[int, int], None]


class ApiError(Exception):
    """The server refused a request; `body` is its problem document (detail, field, rule)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        detail = body.get("detail") or body
        field = body.get("field")
        super().__init__(f"{status}: {detail}" + (f" (field: {field})" if field else ""))

    @property
    def detail(self) -> str:
        return str(self.body.get("detail") or self.body)


class RefusedLocally(Exception):
    """Refused on this machine before anything was sent: `field` names what to fix."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Client:
    def __init__(
        self,
        api_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=self.api_url + "/api/v1",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    # --- plumbing ------------------------------------------------------------------------

    def _check(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"detail": resp.text[:500]}
            if not isinstance(body, dict):
                body = {"detail": str(body)}
            raise ApiError(resp.status_code, body)
        if resp.status_code == 204:
            return None
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self._check(self.http.get(path, params=params))

    def post(self, path: str, json: Any = None) -> Any:
        return self._check(self.http.post(path, json=json))

    def download(self, path: str) -> bytes:
        """The body of a GET as bytes (a file the API serves); errors as ApiError."""
        resp = self.http.get(path, timeout=httpx.Timeout(600.0, connect=10.0))
        if resp.status_code >= 400:
            self._check(resp)
        return resp.content

    # --- reading -------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return dict(self.get("/me"))

    def challenges(self) -> list[dict[str, Any]]:
        return list(self.get("/challenges"))

    def challenge(self, slug: str) -> dict[str, Any]:
        """A challenge with its phases (dates, kind, rules)."""
        return dict(self.get(f"/challenges/{slug}"))

    def phases(self, challenge: str) -> list[dict[str, Any]]:
        return list(self.challenge(challenge)["phases"])

    def phase(self, challenge: str, phase: str) -> dict[str, Any]:
        return dict(self.get(f"/challenges/{challenge}/phases/{phase}"))

    def rules(self, challenge: str, phase: str) -> dict[str, Any]:
        return dict(self.get(f"/challenges/{challenge}/phases/{phase}/rules"))

    def submissions(self, challenge: str, phase: str) -> list[dict[str, Any]]:
        """Your team's submissions to a phase (all of them, for its organizers)."""
        return list(self.get(f"/challenges/{challenge}/phases/{phase}/submissions"))

    def leaderboard(self, challenge: str, phase: str) -> dict[str, Any]:
        return dict(self.get(f"/challenges/{challenge}/phases/{phase}/leaderboard"))

    def tasks(self, challenge: str, phase: str) -> dict[str, Any]:
        """A multi-task phase's tasks and the paths of their boards."""
        return dict(self.get(f"/challenges/{challenge}/phases/{phase}/tasks"))

    def task_leaderboard(self, challenge: str, phase: str, task: str) -> dict[str, Any]:
        return dict(self.get(f"/challenges/{challenge}/phases/{phase}/tasks/{task}/leaderboard"))

    def consensus(self, challenge: str, phase: str) -> dict[str, Any]:
        return dict(self.get(f"/challenges/{challenge}/phases/{phase}/consensus"))

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.get("/nodes"))

    def submission(self, submission_id: int) -> dict[str, Any]:
        return dict(self.get(f"/submissions/{submission_id}"))

    def jobs(self, submission_id: int) -> list[dict[str, Any]]:
        """The submission's jobs (kind, status, attempt, failure) — its artifacts' owners."""
        return list(self.get(f"/submissions/{submission_id}/jobs"))

    def logs(self, job_id: int) -> dict[str, Any]:
        return dict(self.get(f"/jobs/{job_id}/logs"))

    def submission_logs(self, submission_id: int, job: int | None = None) -> list[dict[str, Any]]:
        """Every log of the submission you may read (build, canary, feedback round, the T3
        inference build, released ones); a held one has `held` true, `log` null and a
        `note` saying why."""
        params = {} if job is None else {"job": job}
        return list(self.get(f"/submissions/{submission_id}/logs", **params))

    def artifacts(self, submission_id: int) -> bytes:
        """A codebase submission's trained /output as a tar: in a feedback round (public
        training data), or for the challenge's organizers."""
        return self.download(f"/submissions/{submission_id}/artifacts")

    def report(self, challenge: str) -> bytes:
        """Organizers: the challenge's analysis report as a zip (HTML, PDF, figures, CSV)."""
        return self.download(f"/challenges/{challenge}/analysis/report")

    def score(self, submission: dict[str, Any]) -> dict[str, Any] | None:
        """The submission's leaderboard entry (value, CI, ci_level, metrics), if ranked."""
        board = self.leaderboard(submission["challenge"], submission["phase"])
        for entry in board["entries"]:
            if entry.get("submission_id") == submission["id"]:
                return {
                    "primary_metric": board["primary_metric"],
                    "ci_level": board.get("ci_level"),
                    **entry,
                }
        return None

    # --- submitting ----------------------------------------------------------------------

    def precheck(
        self, challenge: str, phase: str, kind: str, image: dict[str, Any] | None = None
    ) -> None:
        """Raises ApiError with what the server would refuse a submission for now."""
        body: dict[str, Any] = {"kind": kind}
        if image is not None:
            body["image"] = image
        self.post(f"/challenges/{challenge}/phases/{phase}/submissions/precheck", body)

    def check_image(self, path: Path) -> dict[str, Any]:
        """The archive's image config, after the intake checks that need no engine; raises
        RefusedLocally naming what is wrong (not a tar, several images, root, arm64...)."""
        try:
            info = inspect_archive(path)
        except IntakeError as exc:
            raise RefusedLocally(f"{path.name}: {exc.reason}", field="image") from None
        doc = info.config or {}
        return {
            "os": doc.get("os"),
            "architecture": doc.get("architecture"),
            "config": {k: v for k, v in (doc.get("config") or {}).items() if k in _CONFIG_KEYS},
        }

    def submit(
        self,
        challenge: str,
        phase: str,
        *,
        image: Path | None = None,
        repository_url: str | None = None,
        ref: str | None = None,
        comment: str = "",
        progress: Progress | None = None,
        model: Path | None = None,
    ) -> dict[str, Any]:
        """Check locally and with the server, then upload and submit (with `model`, a
        model tarball the algorithm finds read-only at /opt/ml/model). Every refusal before
        the upload (RefusedLocally, ApiError) costs nothing: no byte sent, nothing charged."""
        if (image is None) == (repository_url is None):
            raise RefusedLocally("give either an image archive or a repository URL", "image")
        body: dict[str, Any] = {"comment": comment}
        if image is not None:
            config = self.check_image(image)
            self.precheck(challenge, phase, "algorithm", config)
            body["upload"] = self.upload(image, progress)["key"]
            if model is not None:
                body["model_upload"] = self.upload(model, progress)["key"]
        elif model is not None:
            raise RefusedLocally("a model tarball goes with an algorithm image", "model")
        else:
            if not ref:
                raise RefusedLocally("a repository needs a ref (branch, tag or commit)", "ref")
            self.precheck(challenge, phase, "codebase")
            body.update(repository_url=repository_url, ref=ref)
        return dict(self.post(f"/challenges/{challenge}/phases/{phase}/submissions", body))

    def wait(
        self,
        submission_id: int,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the submission ends; `on_update` sees every state read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sub = self.submission(submission_id)
            if on_update is not None:
                on_update(sub)
            if sub["status"] in FINAL:
                return sub
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"submission {submission_id} is still {sub['status']}")
            time.sleep(interval)

    def cancel(self, submission_id: int) -> dict[str, Any]:
        return dict(self.post(f"/submissions/{submission_id}/cancel"))

    # --- uploads -------------------------------------------------------------------------

    def upload(
        self,
        path: Path,
        progress: Progress | None = None,
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


# What the server's precheck reads from an image config (the rest stays on this machine).
_CONFIG_KEYS = ("User", "Entrypoint", "Cmd")


def _resumable(exc: ApiError) -> bool:
    """A 409 about the chunk (offset, a cut-off or damaged chunk, a concurrent one) is
    resumed from the server's offset; one about the whole file's digest is final."""
    return exc.status == 409 and exc.body.get("field") in ("offset", "upload_checksum")
