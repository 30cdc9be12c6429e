#!/usr/bin/env bash
# Start the Docker engine if none answers (CI and fresh machines), with gVisor's runsc
# registered as a runtime (the sandbox tests run every containment check under it); root only.
set -euo pipefail
mkdir -p /var/log/heldout

# runsc: Debian's package; registered with its own network off, so a phase that picks it gets
# only loopback even if an engine setting were wrong.
command -v runsc >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null
}
register_runsc() {
  python3 - <<'PY'
import json, pathlib
path = pathlib.Path("/etc/docker/daemon.json")
conf = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
runtimes = conf.setdefault("runtimes", {})
want = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
if runtimes.get("runsc") != want:
    runtimes["runsc"] = want
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(conf, indent=2) + "\n")
PY
}
register_runsc

if docker info >/dev/null 2>&1; then
  # An engine that started before the runtime was registered reloads its configuration.
  if ! docker info --format '{{json .Runtimes}}' | grep -q '"runsc"'; then
    kill -HUP "$(pidof dockerd)"
    for _ in $(seq 1 20); do
      docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' && exit 0
      sleep 0.5
    done
    echo "dockerd did not register runsc; see /var/log/heldout/dockerd.log" >&2
    exit 1
  fi
  exit 0
fi
nohup dockerd --iptables=false >/var/log/heldout/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "dockerd did not start; see /var/log/heldout/dockerd.log" >&2
exit 1
