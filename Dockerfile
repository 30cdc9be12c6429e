# heldout server and worker. For a deployment with registry access; on machines without
# one, run `heldout server` / `heldout worker` from a venv (see README).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends git e2fsprogs util-linux \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/heldout
COPY pyproject.toml README.md alembic.ini ./
COPY server server
COPY worker worker
COPY evaluation evaluation
COPY baseline_algorithm baseline_algorithm
COPY migrations migrations
RUN pip install --no-cache-dir -e .
ENV HELDOUT_DATA_DIR=/var/lib/heldout
EXPOSE 8000
CMD ["heldout", "server", "--host", "0.0.0.0"]
