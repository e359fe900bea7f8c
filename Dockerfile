# One image for every managed-backups service; compose.yaml picks the service per container:
#   managed-backups service <name>
# BASE_IMAGE: any Debian-based image; python:3.11-slim by default (its Python is used), a plain
# Debian image (e.g. the locally bootstrapped one scripts/docker-local builds) gets Debian's
# python3. The PostgreSQL client tools (pg_dump, pg_dumpall, pg_restore, psql) come from the
# base's Debian release and must be at least as new as the servers being backed up: bookworm
# packages 15. For newer servers, build on a newer release, e.g.
#   --build-arg BASE_IMAGE=python:3.11-slim-trixie (17)  or  --build-arg PG_CLIENT_PACKAGE=...
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PG_CLIENT_PACKAGE=postgresql-client

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python=""; command -v python3 >/dev/null || python="python3 python3-venv"; \
    apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates ${PG_CLIENT_PACKAGE} ${python} \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version && pg_dumpall --version && pg_restore --version && psql --version \
    && python3 -m venv /opt/managed-backups

WORKDIR /app
# Dependencies first (a layer that survives source edits), then the sources.
COPY pyproject.toml README* ./
RUN mkdir -p contracts shared services managed_backups \
    && /opt/managed-backups/bin/python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(d['project']['dependencies']))" >/tmp/requirements.txt \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/managed-backups/bin/pip install -r /tmp/requirements.txt
# Only what the distribution needs: no .venv, .git or test data in the image.
COPY contracts ./contracts
COPY shared ./shared
COPY services ./services
COPY managed_backups ./managed_backups
RUN PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/managed-backups/bin/pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /data --no-create-home mb \
    && mkdir -p /data /signing-keys /broker-users /broker-admin \
    && chown mb:mb /data /signing-keys /broker-users /broker-admin \
    && chmod 0700 /signing-keys /broker-users && chmod 0755 /broker-admin

ENV PATH=/opt/managed-backups/bin:${PATH} \
    MANAGED_BACKUPS_DATA_DIR=/data
USER mb
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["managed-backups"]
CMD ["--help"]
