# heldout server and worker (docker-compose.yml). BASE_IMAGE is any Debian bookworm image
# with python3 and venv: python:3.11-slim-bookworm where a registry answers, or
# heldout/python:bookworm (scripts/base-image.sh) where none does.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# git: codebase checkouts; e2fsprogs and util-linux: the size-capped /output (mkfs, mount).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git e2fsprogs util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/heldout
COPY . .
# PIP_ARGS="--no-index --find-links .wheels" installs from wheels downloaded on the host.
# Editable, so that alembic.ini and migrations/ stay next to the code that finds them.
ARG PIP_ARGS=""
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir $PIP_ARGS -e '.[worker]' \
    && rm -rf .wheels
ENV PATH=/opt/venv/bin:$PATH HELDOUT_DATA_DIR=/var/lib/heldout
EXPOSE 8000
CMD ["heldout", "server", "--host", "0.0.0.0"]
