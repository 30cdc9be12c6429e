"""Algorithm images for sandbox and intake tests, built from heldout/base:bookworm.

Each image is the base plus a non-root user and one Python script run through a
shell-form ENTRYPOINT, as STOIC images do (`ENTRYPOINT python -m process $0 $@`). Builds
are cached by the engine's layer cache, so rebuilding per session costs about a second.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import textwrap
from collections.abc import Iterable
from pathlib import Path

import docker
import docker.errors

BASE_IMAGE = "heldout/base:bookworm"
REPO = "heldout-test"
_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

STOIC_OUTPUTS = ("probability-covid-19", "probability-severe-covid-19")

# Reads every CT of the case, parses PatientAge from the MetaImage header as STOIC
# finalists do, writes both STOIC outputs as bare numbers. Handles batch layout too.
WELL_BEHAVED = """
import glob, json, os, sys

def predict(case_in, case_out):
    (path,) = glob.glob(os.path.join(case_in, "images/ct/*.mha"))
    header = {}
    with open(path, "rb") as f:
        for line in f:
            key, _, value = line.decode().partition(" = ")
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    age = int(header.get("PatientAge", "050Y").rstrip("Y"))
    os.makedirs(case_out, exist_ok=True)
    with open(os.path.join(case_out, "probability-covid-19.json"), "w") as f:
        json.dump(min(age / 100, 1.0), f)
    with open(os.path.join(case_out, "probability-severe-covid-19.json"), "w") as f:
        json.dump(0.25, f)

if os.path.isdir("/input/images"):
    predict("/input", "/output")
else:
    for case in sorted(os.listdir("/input")):
        if os.path.isdir(os.path.join("/input", case)):
            predict(os.path.join("/input", case), os.path.join("/output", case))
print("done", file=sys.stderr)
"""

# Tries every way out of the sandbox it can think of and reports what happened.
PROBE = """
import errno, json, os, socket, time

report = {"uid": os.getuid(), "gid": os.getgid(), "env": dict(os.environ)}
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
report["cap_eff"] = status["CapEff"].strip()
if "NoNewPrivs" in status:
    report["no_new_privs"] = status["NoNewPrivs"].strip()
else:  # gVisor's /proc has no such line: ask the kernel (PR_GET_NO_NEW_PRIVS)
    import ctypes
    report["no_new_privs"] = str(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))
try:
    report["pid1_environ"] = open("/proc/1/environ", "rb").read().decode(errors="replace")
except OSError as e:
    report["pid1_environ"] = "unreadable: " + errno.errorcode.get(e.errno, str(e.errno))

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    except Exception as e:
        return type(e).__name__

def write(path):
    return attempt(lambda: open(path, "w").write("x"))

report["write"] = {p: write(p) for p in [
    "/input/evil", "/input/images/evil", "/etc/evil", "/evil", "/opt/algorithm/evil",
    "/etc/hosts", "/output/ok.txt", "/tmp/ok.txt", "/dev/shm/ok.txt",
]}
report["docker_sock"] = {p: attempt(lambda p=p: open(p, "rb").read(1))
                         for p in ["/var/run/docker.sock", "/run/docker.sock"]}
def connect(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
    finally:
        s.close()
# The test listens on the host at the port it writes to /input/port.txt.
port = int(open("/input/port.txt").read()) if os.path.exists("/input/port.txt") else 2375
# Loopback is the only address a test may aim at: the proof of isolation is the absence of
# any interface but lo and of any route, plus the host's listening port being unreachable.
report["connect"] = {f"127.0.0.1:{port}": attempt(lambda: connect("127.0.0.1", port))}
report["routes"] = open("/proc/net/route").read().splitlines()[1:]
report["interfaces"] = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
st = os.statvfs("/tmp")
report["tmp_bytes"] = st.f_blocks * st.f_frsize
st = os.statvfs("/dev/shm")
report["shm_bytes"] = st.f_blocks * st.f_frsize
st = os.statvfs("/output")
report["output_bytes"] = st.f_blocks * st.f_frsize

# How many processes may exist at once (pids limit): fork sleepers until refused.
# (Skipped where /input/no-fork exists: under gVisor the sandbox ends instead, which the
# fork-bomb test covers.)
children = []
try:
    for _ in range(0 if os.path.exists("/input/no-fork") else 100000):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as e:
    report["fork_error"] = errno.errorcode.get(e.errno, str(e.errno))
report["forked"] = len(children)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)

with open("/output/probe.json", "w") as f:
    json.dump(report, f)
"""

FORK_BOMB = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""

MEMORY_HOG = """
hog = []
while True:
    hog.append(bytearray(16 * 1024 * 1024))
"""

INFINITE_LOOP = """
while True:
    pass
"""

# Uncaught OSError (ENOSPC) once the directory is full: exit code 1.
FILL_OUTPUT = """
chunk = b"x" * (1024 * 1024)
with open("/output/fill.bin", "wb") as f:
    while True:
        f.write(chunk)
        f.flush()
"""

FILL_TMP = FILL_OUTPUT.replace("/output/fill.bin", "/tmp/fill.bin")
FILL_ROOTFS = FILL_OUTPUT.replace("/output/fill.bin", "/home/algorithm/fill.bin")

# Tries the host's loopback service (its port in /input/port.txt, else 9): with no network
# the container's own lo refuses it, and the script fails.
NETWORK = """
import os, socket
port = int(open("/input/port.txt").read()) if os.path.exists("/input/port.txt") else 9
socket.create_connection(("127.0.0.1", port), timeout=3)
print("connected")
"""

WRITE_INPUT = """
open("/input/images/ct/overwritten.mha", "w").write("x")
"""

NOOP = WELL_BEHAVED.replace('print("done", file=sys.stderr)', "")

# Writes a file elsewhere than /output, as STOIC training finalists do.
WRITES_HOME = """
open("/home/algorithm/model.bin", "wb").write(b"x" * 1024)
open("/output/ok.json", "w").write("1")
"""


def client_or_none() -> docker.DockerClient | None:
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException:
        return None


def ensure_base_image(client: docker.DockerClient) -> None:
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run(["bash", str(_SCRIPTS / "base-image.sh")], check=True)


def build_image(
    client: docker.DockerClient,
    name: str,
    script: str,
    *,
    user: str | None = "algorithm",
    entrypoint: bool = True,
    extra: str = "",
) -> str:
    """Build `heldout-test/<name>:latest` running `script`; return the tag.

    user=None builds an image without USER (runs as root); entrypoint=False one with
    neither ENTRYPOINT nor CMD.
    """
    ensure_base_image(client)
    lines = [
        f"FROM {BASE_IMAGE}",
        "RUN useradd --create-home --uid 1001 --user-group algorithm",
        "COPY process.py /opt/algorithm/process.py",
        "WORKDIR /opt/algorithm",
    ]
    if user:
        lines.append(f"USER {user}")
    if entrypoint:
        lines.append("ENTRYPOINT python3 -u /opt/algorithm/process.py $0 $@")
    lines.append(extra)
    tag = f"{REPO}/{name}:latest"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for fname, text in (("Dockerfile", "\n".join(lines)), ("process.py", script)):
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, network_mode="none"
    )
    return tag


def save_image(
    client: docker.DockerClient, tags: list[str], dest: Path, *, gz: bool = False
) -> Path:
    """`docker save` of one or more images to dest (gzip-compressed when gz)."""
    stream = client.api.get_image(tags[0]) if len(tags) == 1 else _save_many(client, tags)
    with gzip.open(dest, "wb", compresslevel=1) if gz else open(dest, "wb") as f:
        for chunk in stream:
            f.write(chunk)
    return dest


def _save_many(client: docker.DockerClient, tags: list[str]):  # type: ignore[no-untyped-def]
    # The SDK saves one image at a time; the CLI writes one archive for several.
    proc = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    yield from iter(lambda: proc.stdout.read(1 << 20), b"")  # type: ignore[union-attr]
    if proc.wait() != 0:
        raise RuntimeError("docker save failed")


def write_mha(
    path: Path, *, age: str = "055Y", sex: str = "F", shape: tuple[int, ...] = (8, 8, 4)
) -> Path:
    """A tiny MetaImage (.mha) with STOIC's PatientAge/PatientSex header fields."""
    voxels = 1
    for n in shape:
        voxels *= n
    header = (
        "ObjectType = Image\n"
        f"NDims = {len(shape)}\n"
        "BinaryData = True\n"
        "BinaryDataByteOrderMSB = False\n"
        f"DimSize = {' '.join(map(str, shape))}\n"
        "ElementSpacing = 1 1 2.5\n"
        "ElementType = MET_SHORT\n"
        f"PatientAge = {age}\n"
        f"PatientSex = {sex}\n"
        "ElementDataFile = LOCAL\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + bytes(2 * voxels))
    return path


def write_ct_dataset(root: Path, cases: Iterable[tuple[str, int, int, int]]) -> Path:
    """A STOIC-style test set from (case id, age, probCOVID, probSevere) rows: one CT per
    case carrying the age (which WELL_BEHAVED reads) and labels.csv."""
    rows = ["PatientID,probCOVID,probSevere"]
    for case, age, covid, severe in cases:
        write_mha(root / "images" / "ct" / f"{case}.mha", age=f"{age:03d}Y")
        rows.append(f"{case},{covid},{severe}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
