#!/usr/bin/env bash
# Start what the integration tests need on this machine, as root: the Docker engine, Redis
# PostgreSQL and an image registry (Debian packages), plus heldout's base images. Idempotent.
# Prints the environment to export (HELDOUT_TEST_POSTGRES_URL, HELDOUT_TEST_REDIS_URL,
# HELDOUT_TEST_REGISTRY).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Callers eval stdout, so only the exports go there. Everything else goes to stderr, and the
# daemons started here must not hold stdout open either (the caller would wait for EOF):
# pg_ctlcluster, for one, says "Removed stale pid file." after an unclean stop.
start() {
  missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v git >/dev/null || missing+=(git)
  command -v docker-compose >/dev/null || missing+=(docker-compose)  # the compose test
  command -v git-lfs >/dev/null || missing+=(git-lfs)
  # R's pROC: the reference the DeLong tests are cross-checked against.
  command -v Rscript >/dev/null || missing+=(r-cran-proc)
  command -v chromium >/dev/null || missing+=(chromium)  # browser tests (Playwright drives it)
  command -v docker-registry >/dev/null || missing+=(docker-registry)  # images between nodes
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi

  "$here/start-docker.sh"

  # Redis on its own port so a system redis is left alone.
  REDIS_PORT=${HELDOUT_TEST_REDIS_PORT:-6391}
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
      --logfile /tmp/heldout-redis.log >/dev/null
    for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi

  # The distribution registry on loopback, plain HTTP: the engine allows that for 127.0.0.0/8
  # without configuration (RegistryConfig.InsecureRegistryCIDRs). No auth, data under /tmp.
  REGISTRY_PORT=${HELDOUT_TEST_REGISTRY_PORT:-5391}
  if ! curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1; then
    dir=/tmp/heldout-registry
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http: {addr: "127.0.0.1:$REGISTRY_PORT"}
YAML
    setsid docker-registry serve "$dir/config.yml" </dev/null >>/tmp/heldout-registry.log 2>&1 &
    for _ in $(seq 1 50); do
      curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi

  # PostgreSQL: Debian's cluster, a heldout role and database.
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | grep -q online; then
    pg_lsclusters -h | grep -q "^$ver main" || pg_createcluster "$ver" main >/dev/null
    # A machine restored from a snapshot keeps the lock files of a server that no longer runs;
    # their pid may now belong to another process, and PostgreSQL would refuse to start.
    if ! pgrep -x postgres >/dev/null; then
      rm -f /var/run/postgresql/.s.PGSQL.*.lock "/var/lib/postgresql/$ver/main/postmaster.pid"
    fi
    pg_ctlcluster "$ver" main start
  fi
  for _ in $(seq 1 50); do su postgres -c "pg_isready -q" && break; sleep 0.2; done
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='heldout'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE heldout LOGIN SUPERUSER PASSWORD 'heldout'\""
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='heldout_test'\"" | grep -q 1 ||
    su postgres -c "createdb -O heldout heldout_test"

  "$here/base-image.sh"
}
start >&2

echo "export HELDOUT_TEST_POSTGRES_URL=postgresql+psycopg://heldout:heldout@127.0.0.1:5432/heldout_test"
echo "export HELDOUT_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
echo "export HELDOUT_TEST_REGISTRY=127.0.0.1:$REGISTRY_PORT"
