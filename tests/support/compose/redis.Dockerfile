# Stands in for the official redis image where no registry answers: Debian's redis-server,
# reachable from other containers as the official image is (protected mode off).
FROM heldout/base:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /data
ENTRYPOINT ["/bin/sh", "-c", "exec \"$@\" --protected-mode no", "--"]
CMD ["redis-server"]
