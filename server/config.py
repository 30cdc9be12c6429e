"""All of heldout's settings, in one object read from `HELDOUT_*` environment variables."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.codebases.baseimages import DEFAULT_ALLOWED_BASE_IMAGES, parse_allowed

# Passwords that ship in this repository (tests, scripts): never a production one.
DEFAULT_PASSWORDS = frozenset({"", "heldout"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HELDOUT_", env_file=".env", extra="ignore")

    # production: refuse to start with defaults or test-only settings (see production_problems).
    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(Path(".heldout"), description="SQLite file, artifacts, embedded Redis")
    database_url: str | None = Field(None, description="default: SQLite file in data_dir")
    # Unset means: the CLI starts an embedded redis-server on a socket in data_dir.
    redis_url: str | None = None
    artifact_dir: Path | None = Field(None, description="default: data_dir/artifacts")

    # Client side (CLI).
    api_url: str = "http://127.0.0.1:8000"
    token: str | None = None

    # Server.
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 20 * 1024**3
    # Threads per server process for sync endpoints; database pools are sized to match, so
    # a request never waits for a connection another thread could hand back.
    server_threads: int = Field(32, ge=1, le=256)
    # A reader that finds the stored leaderboard out of date waits this long for its
    # recompute, then is served the previous board (a phase's first board is waited for).
    leaderboard_fresh_wait_s: float = Field(2.0, ge=0)
    # `heldout server --workers`: processes behind one port.
    server_workers: int = Field(1, ge=1, le=64)
    # One line per request on stderr. Behind a reverse proxy that logs requests, switching
    # it off saves about 0.1 ms of CPU per request (a sixth of a held leaderboard's GET).
    access_log: bool = True

    # Intake of T2 image archives.
    max_image_archive_bytes: int = 20 * 1024**3
    max_image_bytes: int = 20 * 1024**3
    # Refused while the archive is read, before the engine unpacks anything (gzip bombs):
    # what its layers expand to in all, and bytes out per compressed byte in.
    max_image_expanded_bytes: int = 20 * 1024**3
    max_image_compression_ratio: int = 50
    # An algorithm's model tarball (/opt/ml/model): what it expands to, and its entries.
    max_model_bytes: int = 20 * 1024**3
    max_model_entries: int = Field(100_000, ge=1)

    # T3 codebases.
    allowed_local_repo_roots: list[Path] = Field(default_factory=list)
    # Tests and single-machine set-ups serve repositories on 127.0.0.1.
    allow_loopback_repos: bool = False
    # Repositories and Git LFS objects come only from globally routable addresses, plus these
    # networks (CIDRs, e.g. ["10.20.0.0/16"] for an internal forge; JSON in the environment).
    allowed_repo_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    # A push webhook whose payload says it is older than this is refused (GitHub lets a
    # failed delivery be redelivered for 3 days).
    webhook_max_age_s: int = 3 * 24 * 3600
    max_repo_bytes: int = 2 * 1024**3
    git_timeout_s: int = 120
    build_timeout_s: int = 3600
    # A T3 smoke-train (the training image on the public canary cases, before private
    # training) runs for at most min(this, the phase's training wall time).
    smoke_train_s: int = Field(600, ge=1)
    # Docker build network: None for the engine's default, "host" where builds must reach
    # a package index (contracts.md: builds have network access; runs never do).
    build_network: str | None = None
    # Every FROM and COPY --from of a codebase's Dockerfiles must name one of these (or an
    # earlier stage); `name@sha256:<image id>` also pins the image the engine holds under
    # the name. A phase may narrow the list (PhaseSpec.allowed_base_images).
    allowed_base_images: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_BASE_IMAGES)
    )
    # Keys submission image tags (heldout-<installation>/sub-<id>-<hmac>) so no team can
    # guess another's; unset: a random key per worker process (tags are never looked up).
    image_tag_key: SecretStr | None = None
    # Keys which test cases are private (PhaseSpec.private_fraction); participants must not
    # be able to compute it. Unset: a random key generated once into data_dir/split.key
    # (set it when servers on several hosts share one database).
    split_key: SecretStr | None = None

    # Worker.
    worker_concurrency: int = 2
    worker_id: str | None = None
    # This machine's name among the worker nodes (`heldout worker --node-name`); default:
    # the host name. Jobs, GPU leases and container labels carry it.
    node_name: str | None = None
    # The node's GPU device ids, "0,1" or a JSON list; they are leased in the database, one
    # job per device. Ids are only names to the lease: in tests they need no real GPU.
    gpu_device_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a job waits for a GPU lease (pending, its deadline not started) before its
    # message goes back to the queue.
    gpu_wait_s: int = 3600
    # Tests and development: GPU ids are leased as usual but not requested from the engine,
    # so a GPU phase's containers run on a machine without GPUs (refused in production).
    fake_gpus: bool = False
    # Many nodes: a worker node that shares no filesystem with the server sets both, and then
    # fetches artifacts by digest from the server's node-only endpoints into its own cache
    # and sends outputs and logs back the same way. Empty: artifacts are read and written in
    # artifact_dir directly (one machine, or a shared filesystem).
    node_server_url: str = ""
    node_token: SecretStr | None = None
    node_cache_dir: Path | None = Field(None, description="default: data_dir/cache")
    # The cache's bound; the least recently used files not in use by a job are evicted.
    node_cache_bytes: int = Field(50 * 1024**3, ge=1)
    # Many nodes: the installation's image registry, "host:port" (docker-compose.yml's
    # `registry`; the engine must trust it: loopback is plain-HTTP-allowed by default, other
    # hosts need TLS or the engine's insecure-registries). Set, each image a worker loads or
    # builds is pushed there and recorded by digest, and a node without an image a job needs
    # pulls it by that digest, refusing it unless its id is the one recorded. Unset: images
    # stay on the engine that made them (one machine, or nodes sharing one engine).
    image_registry: str | None = None
    # The registry's credentials (htpasswd on the distribution registry), required in
    # production: builds have network, the registry lists every repository to anyone it
    # lets in, and trained models are in those images.
    image_registry_user: str | None = None
    image_registry_password: SecretStr | None = None
    # With a registry: below this much free space on the engine's disk, the reaper removes
    # submission images no queued job and no running job of this node uses (they can be
    # pulled again). 0: off.
    image_prune_free_bytes: int = Field(10 * 1024**3, ge=0)
    heartbeat_s: int = 10
    deadline_margin_s: int = 300
    # A pending job older than this whose queue is empty lost its message; it is re-sent.
    requeue_lost_after_s: int = 60
    # Empty: heldout's own evaluator, tagged by the digest of its code and built on first
    # use. Otherwise an image the operator provides; its reference is the evaluator's key.
    evaluation_image: str = ""
    max_attempts: int = 3
    # Size-capped /output filesystems kept formatted and mounted ahead per size, reused
    # (wiped completely) between cases: provisioning drops from a mkfs and a loop mount to
    # one bind mount. 0: off (each case formats its own). docker-compose.yml sets 2.
    output_pool: int = Field(0, ge=0, le=16)
    # Development only: where no size-capped (loop-mounted) /output can be made, run with a
    # plain directory checked after the run. Off: the worker refuses to start instead.
    allow_unsized_output: bool = False
    # Runtime of CPU containers when the phase names none: "runc", or "runsc" (gVisor,
    # registered in the engine with --network=none). GPU containers always use runc.
    container_runtime: Literal["runc", "runsc"] = "runc"

    @field_validator("gpu_device_ids", mode="before")
    @classmethod
    def _gpu_ids(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("image_registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        value = (value or "").strip().rstrip("/")
        if "://" in value or "@" in value:
            raise ValueError("HELDOUT_IMAGE_REGISTRY is host:port (no scheme), e.g. 10.0.0.5:5000")
        return value or None

    @field_validator("allowed_base_images")
    @classmethod
    def _base_images(cls, value: list[str]) -> list[str]:
        return [str(ref) for ref in parse_allowed(value)]

    @property
    def registry_auth(self) -> tuple[str, str] | None:
        """(user, password) for the image registry, or None for an anonymous one."""
        if not self.image_registry_user or not self.image_registry_password:
            return None
        return self.image_registry_user, self.image_registry_password.get_secret_value()

    @model_validator(mode="after")
    def _registry_credentials(self) -> Settings:
        password = (
            self.image_registry_password.get_secret_value() if self.image_registry_password else ""
        )
        if bool(self.image_registry_user) != bool(password):
            raise ValueError(
                "HELDOUT_IMAGE_REGISTRY_USER and HELDOUT_IMAGE_REGISTRY_PASSWORD go together"
            )
        return self

    @model_validator(mode="after")
    def _node_credential(self) -> Settings:
        token = self.node_token.get_secret_value() if self.node_token else ""
        if bool(self.node_server_url) != bool(token):
            raise ValueError(
                "HELDOUT_NODE_SERVER_URL and HELDOUT_NODE_TOKEN go together: a node fetches "
                "artifacts from the server only with a node token (`heldout node-token create`)"
            )
        return self

    @model_validator(mode="after")
    def _production_guard(self) -> Settings:
        problems = production_problems(self) if self.environment == "production" else []
        if problems:
            raise ValueError(
                "HELDOUT_ENVIRONMENT=production refuses to start: " + "; ".join(problems)
            )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        if self.data_dir.is_absolute():
            return _sqlite_url(self.data_dir)  # read on every request: no lstat each time
        return f"sqlite:///{(self.data_dir / 'heldout.db').resolve()}"

    @property
    def artifacts_path(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def node_cache_path(self) -> Path:
        return (self.node_cache_dir or self.data_dir / "cache").resolve()

    @property
    def embedded_redis_socket(self) -> Path:
        return (self.data_dir / "redis.sock").resolve()

    @property
    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        return f"redis+socket://{self.embedded_redis_socket}"


def production_problems(settings: Settings) -> list[str]:
    """Each setting a production installation must not run with, named as its variable."""
    problems = []
    if settings.database_url and not settings.database_url.startswith("sqlite"):
        password = unquote(urlsplit(settings.database_url).password or "")
        if password in DEFAULT_PASSWORDS:
            what = "empty" if not password else f"the default {password!r}"
            problems.append(f"HELDOUT_DATABASE_URL: the database password is {what}")
    if settings.allow_loopback_repos:
        problems.append("HELDOUT_ALLOW_LOOPBACK_REPOS: loopback repositories are for tests")
    if settings.allow_unsized_output:
        problems.append("HELDOUT_ALLOW_UNSIZED_OUTPUT: an uncapped /output is for development")
    if settings.fake_gpus:
        problems.append("HELDOUT_FAKE_GPUS: GPU ids the engine never sees are for tests")
    if settings.image_registry and settings.registry_auth is None:
        # Loopback is no exception: builds on the host network reach it, and where the
        # registry listens (HELDOUT_REGISTRY_BIND) is not a setting a node can see.
        problems.append(
            "HELDOUT_IMAGE_REGISTRY_USER/_PASSWORD: a registry without credentials serves "
            "every submission's images, trained models included, to anything that reaches it"
        )
    return problems


@lru_cache
def get_settings() -> Settings:
    return Settings()


@lru_cache(maxsize=64)
def _sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'heldout.db').resolve()}"
