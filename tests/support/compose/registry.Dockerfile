# Stands in for the official registry:2 image where no registry answers: Debian's
# docker-registry (the distribution registry), storing under /var/lib/registry on port 5000.
FROM heldout/base:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends docker-registry \
    && rm -rf /var/lib/apt/lists/*
RUN printf '%s\n' 'version: 0.1' 'storage:' '  filesystem:' '    rootdirectory: /var/lib/registry' \
    'http:' '  addr: :5000' > /etc/docker/registry/config.yml
EXPOSE 5000
ENTRYPOINT ["docker-registry", "serve", "/etc/docker/registry/config.yml"]
