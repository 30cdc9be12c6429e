"""The Docker backend's flags and helpers, checked without an engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from docker.types import Mount

from server.challenges.schemas import Limits
from worker.executor.base import RunSpec, container_name
from worker.executor.docker import (
    _parse_ts,
    container_options,
    copy_regular_tree,
    refused_user_reason,
    resolve_user,
)
from worker.executor.sized_dir import image_bytes

LIMITS = Limits(memory_mb=16384, cpus=2, pids=256, shm_mb=128, tmp_mb=512, wall_time_s=600)


def spec(**kw: Any) -> RunSpec:
    return RunSpec(
        **{
            "image": "sha256:abc",
            "job_id": "42",
            "attempt": 2,
            "inputs": Path("/in"),
            "limits": LIMITS,
            **kw,
        }
    )


def options(**kw: Any) -> dict[str, Any]:
    return container_options(
        spec(**kw), "sha256:abc", [Mount("/input", "/in", read_only=True)], rootfs_quota=True
    )


def host_config(opts: dict[str, Any]) -> dict[str, Any]:
    # The SDK's own translation into the API's HostConfig, as the engine receives it.
    from docker.models.containers import _create_container_args

    return _create_container_args({**opts, "version": "1.41"})["host_config"]  # type: ignore[no-any-return]


def test_default_sandbox_flags() -> None:
    opts = options()
    assert opts["network_mode"] == "none"
    assert opts["read_only"] is True
    assert opts["cap_drop"] == ["ALL"] and "cap_add" not in opts
    assert opts["security_opt"] == ["no-new-privileges"]
    assert opts["init"] is True and opts["ipc_mode"] == "private"
    assert opts["tmpfs"] == {"/tmp": "rw,exec,nosuid,nodev,size=512m,mode=1777"}
    # The image decides what runs and as whom.
    for key in ("entrypoint", "command", "user", "privileged", "volumes", "devices"):
        assert key not in opts
    # No worker environment reaches the container.
    assert opts["environment"] == {"NVIDIA_VISIBLE_DEVICES": "void"}
    assert "device_requests" not in opts
    hc = host_config(opts)
    assert hc["Memory"] == hc["MemorySwap"] == 16384 * 2**20  # swap off
    assert hc["PidsLimit"] == 256 and hc["NanoCpus"] == 2_000_000_000
    assert hc["ShmSize"] == 128 * 2**20
    assert hc["Ulimits"] == [{"Name": "core", "Soft": 0, "Hard": 0}]
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "16m", "max-file": "1"}}
    assert hc["Mounts"][0]["ReadOnly"] is True and hc["Mounts"][0]["Target"] == "/input"


def test_gpus_are_pinned_by_device_id() -> None:
    opts = options(limits=LIMITS.model_copy(update={"gpus": 2}), gpu_device_ids=["1", "3"])
    hc = host_config(opts)
    assert hc["DeviceRequests"] == [
        {
            "Driver": "",
            "Count": 0,
            "DeviceIDs": ["1", "3"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert "environment" not in opts  # the engine sets NVIDIA_VISIBLE_DEVICES itself


def test_training_flags() -> None:
    opts = options(writable_rootfs=True, cap_add=["SYS_NICE"])
    assert opts["read_only"] is False and "tmpfs" not in opts
    assert opts["storage_opt"] == {"size": "512m"}
    assert opts["cap_drop"] == ["ALL"] and opts["cap_add"] == ["SYS_NICE"]
    no_quota = container_options(spec(writable_rootfs=True), "sha256:abc", [], rootfs_quota=False)
    assert "storage_opt" not in no_quota


def test_names_and_labels_are_deterministic() -> None:
    s = spec(index=7, labels={"heldout.submission": "9"})
    assert s.name == container_name("42", 2, 7) == "heldout-job-42-a2-7"
    assert s.all_labels == {
        "heldout.submission": "9",
        "heldout.managed": "1",
        "heldout.job": "42",
        "heldout.attempt": "2",
        "heldout.index": "7",
    }


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"job_id": "../x"}, "job_id"),
        ({"gpu_device_ids": ["0"]}, "GPU ids"),
        ({"limits": Limits(gpus=1)}, "no GPU ids"),
        ({"cap_add": ["SYS_ADMIN"]}, "may not be added"),
        ({"read_only_mounts": {Path("/gt"): "/output"}}, "mount target"),
        ({"read_only_mounts": {Path("/gt"): "relative"}}, "mount target"),
        ({"labels": {"heldout.job": "other"}}, "set by the executor"),
    ],
)
def test_invalid_specs_are_refused(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        spec(**kw)


@pytest.mark.parametrize(
    ("user", "refused"),
    [
        ("", True),
        (None, True),
        ("root", True),
        ("0", True),
        ("0:0", True),
        ("root:root", True),
        ("0:1000", True),
        (" root ", True),
        ("algorithm", False),
        ("1000:1000", False),
        ("nobody", False),
    ],
)
def test_root_users_are_refused(user: str | None, refused: bool) -> None:
    assert (refused_user_reason(user) is not None) is refused


PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\nalgorithm:x:1001:1002::/home/algorithm:/bin/sh\n"
    "toor:x:0:0::/root:/bin/sh\nbroken:x:abc\n"
)
GROUP = "root:x:0:\nalgorithm:x:1002:\nvideo:x:44:\n"


@pytest.mark.parametrize(
    ("user", "ids"),
    [
        ("algorithm", (1001, 1002)),
        ("1001", (1001, 1002)),
        ("4242", (4242, 0)),
        ("algorithm:video", (1001, 44)),
        ("algorithm:55", (1001, 55)),
        ("toor", (0, 0)),
        ("missing", None),
        ("algorithm:nogroup", None),
        ("broken", None),
    ],
)
def test_resolve_user(user: str, ids: tuple[int, int] | None) -> None:
    assert resolve_user(user, PASSWD, GROUP) == ids


def test_copy_regular_tree_skips_links_and_fifos(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text("1")
    (src / "sub" / "b.mha").write_bytes(b"xyz")
    os.symlink("/etc/shadow", src / "leak.json")
    os.symlink("/etc", src / "etc")
    os.mkfifo(src / "pipe")
    skipped = copy_regular_tree(src, dest)
    assert sorted(skipped) == ["etc", "leak.json", "pipe"]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "a.json",
        "sub",
        "sub/b.mha",
    ]
    assert (dest / "sub" / "b.mha").read_bytes() == b"xyz"


def test_docker_timestamps_with_nanoseconds() -> None:
    a = _parse_ts("2026-11-24T09:36:03.290162282Z")
    b = _parse_ts("2026-11-24T09:36:04.5Z")
    assert (b - a).total_seconds() == pytest.approx(1.209838, abs=1e-6)


def test_sized_image_leaves_room_for_ext4_metadata() -> None:
    for mb in (1, 8, 256, 4095, 4096, 102400):
        assert mb * 2**20 * 1.02 < image_bytes(mb) < mb * 2**20 * 1.05 + 8192
