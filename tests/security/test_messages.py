"""What a participant reads about runs on private data carries nothing their code chose
(file names, exit codes, output values), no private case name, no ground-truth column, no
host name and no evaluator output; organizers read the detail in `operator_detail`.

Real engine, Redis, PostgreSQL and a Celery worker process, as in test_pipeline_t2.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from tests.conftest import REDIS_URL, need
from tests.support import images
from tests.support.factories import apply_bundle, auth, stoic_bundle, submit_blob, user_token
from tests.support.workers import celery_worker, wait_final

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow]

# Private case names: they must never reach a participant.
CASES = ("PRIV4711a", "PRIV4711b", "PRIV4711c")


@pytest.fixture
def live(pg_settings: Settings) -> Any:
    need(REDIS_URL is not None, "Redis (HELDOUT_TEST_REDIS_URL)")
    client = images.client_or_none()
    need(client is not None, "a Docker engine")
    redis.Redis.from_url(pg_settings.broker_url).flushdb()
    settings = pg_settings.model_copy(update={"heartbeat_s": 1})
    with TestClient(create_app(settings)) as api:
        yield settings, api, client


def _dataset(root: Path, bad_label: bool = False) -> Path:
    # bad_label: no severe case at all, so the primary AUC is undefined on the test set: the
    # organizers' error, which apply only warns about (a staging set may be that small).
    return images.write_ct_dataset(
        root,
        ((c, 30 + 20 * i, int(i >= 1), int(i == 2 and not bad_label)) for i, c in enumerate(CASES)),
    )


def _run(
    live: Any,
    tmp_path: Path,
    script: str,
    name: str,
    *,
    bad_label: bool = False,
    worker_env: dict[str, str] | None = None,
    watch: bool = False,
    **bundle_kw: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]], str, list[str]]:
    """Submit `script` as alice; her final submission view, her jobs view, an organizer
    token, and every job failure text alice could read while it ran (watch=True)."""
    settings, api, client = live
    admin = user_token(settings, "admin", admin=True)
    bundle = stoic_bundle(**bundle_kw)
    ds = _dataset(tmp_path / "test", bad_label)
    assert apply_bundle(api, admin, bundle, {"test": ds}).status_code == 200
    tag = images.build_image(client, name, script)
    archive = images.save_image(client, [tag], tmp_path / f"{name}.tar.gz", gz=True)
    alice = user_token(settings, "alice")
    seen: list[str] = []
    with celery_worker(settings, **(worker_env or {})):
        r = submit_blob(api, alice, data=archive.read_bytes())
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        if watch:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                view = api.get(f"/api/v1/submissions/{sid}", headers=auth(alice)).json()
                for j in api.get(f"/api/v1/submissions/{sid}/jobs", headers=auth(alice)).json():
                    seen.append(json.dumps(j))
                if view["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.2)
        final = wait_final(api, alice, sid)
    jobs = api.get(f"/api/v1/submissions/{sid}/jobs", headers=auth(alice)).json()
    return final, jobs, admin, seen


def _participant_text(final: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    """Every message a participant reads about the submission and its jobs."""
    parts = [final.get("failure_code"), final.get("failure_message"), final.get("operator_detail")]
    parts += [t["note"] for t in final["transitions"]]
    for j in jobs:
        parts += [j.get("failure_code"), j.get("failure_message"), j.get("operator_detail")]
    return "\n".join(p for p in parts if p)


def _assert_clean(text: str) -> None:
    for case in CASES:
        assert case not in text, f"private case name {case} shown: {text}"


# The algorithm names a file output after the first bytes of each private CT.
HEX_NAME = images.WELL_BEHAVED.replace(
    'print("done", file=sys.stderr)',
    """
(ct,) = glob.glob("/input/images/ct/*.mha")
open("/output/mask." + open(ct, "rb").read(30).hex(), "wb").write(b"x")
""",
)

MASK_OUTPUT = {"slug": "mask", "kind": "file", "extension": ".nii.gz"}


def _outputs_plus(extra: dict[str, Any]) -> list[dict[str, Any]]:
    import yaml

    from tests.support.factories import STOIC_PHASE

    return [*yaml.safe_load(STOIC_PHASE)["outputs"], extra]


def test_wrong_extension_output_name_is_not_quoted(live: Any, tmp_path: Path) -> None:
    final, jobs, _, _ = _run(
        live, tmp_path, HEX_NAME, "msg-hexname", extra_phase={"outputs": _outputs_plus(MASK_OUTPUT)}
    )
    assert final["status"] == "failed" and final["failure_code"] == "cases_failed", final
    text = _participant_text(final, jobs)
    assert not re.search(r"[0-9a-f]{16,}", text), text
    assert "wrong extension" not in text or "mask.nii.gz" in text
    assert "'mask'" in final["failure_message"]  # the interface is still named
    _assert_clean(text)


def test_exit_code_on_private_case_is_a_fixed_class(live: Any, tmp_path: Path) -> None:
    script = "import sys\nprint('PRIV-STDERR', file=sys.stderr)\nsys.exit(37)\n"
    final, jobs, _, _ = _run(live, tmp_path, script, "msg-exit37")
    assert final["status"] == "failed" and final["failure_code"] == "cases_failed", final
    text = _participant_text(final, jobs)
    # Public case names are UUIDs, which may hold "37" themselves.
    assert "37" not in re.sub(r"[0-9a-f-]{36}", "", text), text
    infer = [j for j in jobs if j["kind"] == "infer"]
    assert infer and all(j["failure_code"] == "exit_code" for j in infer), infer
    assert all("37" not in (j["failure_message"] or "") for j in infer)
    assert "PRIV-STDERR" not in text
    _assert_clean(text)


def test_evaluation_error_hides_cases_and_columns(live: Any, tmp_path: Path) -> None:
    _, api, _ = live
    final, jobs, admin, _ = _run(live, tmp_path, images.WELL_BEHAVED, "msg-gt", bad_label=True)
    assert final["status"] == "failed", final
    assert final["failure_code"] == "evaluation_config_error", final
    text = _participant_text(final, jobs)
    _assert_clean(text)
    assert "probSevere" not in text and "undefined on this ground truth" not in text, text
    # The organizer sees what went wrong, on the submission and on the job.
    org = api.get(f"/api/v1/submissions/{final['id']}", headers=auth(admin)).json()
    assert "undefined on this ground truth" in (org["operator_detail"] or ""), org
    org_jobs = api.get(f"/api/v1/submissions/{final['id']}/jobs", headers=auth(admin)).json()
    (ev,) = [j for j in org_jobs if j["kind"] == "evaluate"]
    assert "undefined on this ground truth" in (ev["operator_detail"] or "")


BROKEN_EVALUATOR = """
import sys
print("Traceback (most recent call last): EVAL-STDERR-SECRET " + open("/etc/hostname").read(),
      file=sys.stderr)
sys.exit(1)
"""


def test_retried_job_messages_hide_stderr_and_hosts(live: Any, tmp_path: Path) -> None:
    settings, api, client = live
    evaluator = images.build_image(client, "msg-broken-evaluator", BROKEN_EVALUATOR)
    settings = settings.model_copy(update={"evaluation_image": evaluator})
    host = "node-secret-17.cluster.internal"
    final, jobs, admin, seen = _run(
        (settings, api, client),
        tmp_path,
        images.WELL_BEHAVED,
        "msg-retried",
        worker_env={
            "HELDOUT_EVALUATION_IMAGE": evaluator,
            "HELDOUT_WORKER_ID": f"{host}:4242",
            "HELDOUT_MAX_ATTEMPTS": "3",
        },
        watch=True,
    )
    assert final["status"] == "failed" and final["failure_code"] == "platform_error", final
    retried = [s for s in seen if "retried" in s]
    assert retried, "the evaluate job should have been seen between attempts"
    everything = "".join(seen) + _participant_text(final, jobs)
    for secret in ("EVAL-STDERR-SECRET", "Traceback", host, "exit_code:1"):
        assert secret not in everything, (secret, retried[:1])
    org_jobs = api.get(f"/api/v1/submissions/{final['id']}/jobs", headers=auth(admin)).json()
    (ev,) = [j for j in org_jobs if j["kind"] == "evaluate"]
    assert "EVAL-STDERR-SECRET" in (ev["operator_detail"] or ""), ev


def test_reaped_job_message_hides_the_worker_host(live: Any, tmp_path: Path) -> None:
    """The reaper's reason names the worker (host:pid); a participant reads fixed words."""
    from server.db import session_scope
    from server.jobs.models import Job
    from server.jobs.states import JobStatus
    from server.submissions.advance import retry_or_fail

    settings, api, _ = live
    admin = user_token(settings, "admin", admin=True)
    assert apply_bundle(api, admin, stoic_bundle(), {"test": _dataset(tmp_path / "t")}).status_code
    alice = user_token(settings, "alice")
    sid = submit_blob(api, alice, data=b"no worker runs it").json()["id"]
    with session_scope(settings) as session:
        job = session.query(Job).filter_by(submission_id=sid).one()
        job.status, job.attempt = JobStatus.running.value, 1
        session.flush()
        retry_or_fail(session, settings, job, "worker node-secret-9.internal:77 stopped answering")
    jobs = api.get(f"/api/v1/submissions/{sid}/jobs", headers=auth(alice)).json()
    assert jobs[0]["failure_message"] and "retried" in jobs[0]["failure_message"]
    assert "node-secret-9" not in json.dumps(jobs), jobs
    org = api.get(f"/api/v1/submissions/{sid}/jobs", headers=auth(admin)).json()
    assert "node-secret-9" in (org[0]["operator_detail"] or "")


PROBABILITY_17 = images.WELL_BEHAVED.replace("json.dump(0.25, f)", "json.dump(1.7, f)")


def test_out_of_range_probability_is_invalid(live: Any, tmp_path: Path) -> None:
    """The interface declares no range, but an AUC metric scores it: a probability."""
    outputs = [
        {"slug": "probability-covid-19", "kind": "json", "value_type": "number"},
        {"slug": "probability-severe-covid-19", "kind": "json", "value_type": "number"},
    ]
    final, jobs, _, _ = _run(
        live, tmp_path, PROBABILITY_17, "msg-prob17", extra_phase={"outputs": outputs}
    )
    assert final["status"] == "failed" and final["failure_code"] == "cases_failed", final
    msg = final["failure_message"]
    assert "probability-severe-covid-19" in msg and "[0, 1]" in msg, msg
    text = _participant_text(final, jobs)
    assert "1.7" not in text, text
    infer = [j for j in jobs if j["kind"] == "infer"]
    assert all(j["failure_code"] == "invalid_output:probability-severe-covid-19" for j in infer)
    _assert_clean(text)
