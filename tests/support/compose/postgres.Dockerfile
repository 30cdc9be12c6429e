# Stands in for the official postgres image where no registry answers: Debian's PostgreSQL
# with the same contract (POSTGRES_USER/PASSWORD/DB, data in /var/lib/postgresql/data,
# pg_isready on PATH, port 5432).
FROM heldout/base:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
    && pg_dropcluster 15 main && rm -rf /var/lib/apt/lists/*
# The server's own binaries first, as in the official image (Debian's pg_wrapper would pick
# a port from cluster configuration that this image does not use).
ENV PATH=/usr/lib/postgresql/15/bin:$PATH
COPY postgres-entrypoint.sh /usr/local/bin/entrypoint
ENTRYPOINT ["/usr/local/bin/entrypoint"]
