"""Property-based fuzzing of the whole API from its OpenAPI document (schemathesis), as an
admin and as a participant, against a live server (uvicorn in a thread) on a seeded SQLite
database: no
response may be a 5xx, and every status code, content type, header and body must be the
ones the document declares. Bounded to FUZZ_EXAMPLES examples per operation and role."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server import dispatch
from server.app import create_app
from tests.conftest import _sqlite_settings
from tests.support.factories import auth, stoic_challenge, user_token
from tests.support.workers import free_port, wait_healthy

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("HELDOUT_FUZZ_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_fuzzed_requests_get_no_5xx_and_only_documented_responses(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sent_tasks: list[dispatch.PendingTask],
) -> None:
    settings = _sqlite_settings(tmp_path, tmp_path_factory)
    app = create_app(settings)
    with TestClient(app) as api:
        stoic_challenge(api, settings, tmp_path)  # a challenge, a phase, a dataset to hit
    with live_server(app) as base_url:
        schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
        failures: list[str] = []
        statuses: Counter[int] = Counter()
        for result in schema.get_all_operations():
            operation = result.ok()
            for role in ("admin", "participant"):
                # Fresh tokens per operation: a fuzzed DELETE /tokens/{id} may revoke one.
                token = user_token(settings, role, admin=role == "admin")
                _fuzz(operation, auth(token), failures, statuses)
    total = sum(statuses.values())
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    summary = f"{total} requests, {server_errors} with 5xx, {len(failures)} check failures"
    print(summary, dict(sorted(statuses.items())))
    assert not failures, summary + "\n\n" + "\n".join(failures[:20])
    assert total > 0


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, 30, "the fuzzed server")
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _fuzz(
    operation: Any, headers: dict[str, str], failures: list[str], statuses: Counter[int]
) -> None:
    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],  # failures are collected, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                failures.append(
                    f"{operation.label} -> {response.status_code}: {failure.title}: "
                    f"{str(failure.message)[:300]}"
                )

    run()
