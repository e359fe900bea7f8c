# One image for every managed-backups service; compose.yaml picks the service per container:
#   managed-backups service <name>
# BASE_IMAGE: a Debian 12 (bookworm) based image; python:3.11-slim by default (its Python is
# used), a plain Debian image (e.g. the locally bootstrapped one scripts/docker-local builds)
# gets Debian's python3. The PostgreSQL client tools (pg_dump, pg_dumpall, pg_restore, psql) of
# every major in PG_CLIENT_MAJORS (default 14 to 18, built for Debian 12's libraries) are fetched
# by the project's own `python -m managed_backups.shared.infra.postgres_binaries fetch
# --clients-only` into /opt/managed-backups/cache: a cluster of any supported version (13 to 18;
# 13 gets 14's tools) is backed up and restored with the tools of its own major, chosen per
# cluster. Debian's postgresql-client brings the libraries they need (and its own 15).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PG_CLIENT_PACKAGE=postgresql-client
ARG PG_CLIENT_MAJORS="14 15 16 17 18"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MANAGED_BACKUPS_CACHE_DIR=/opt/managed-backups/cache

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
# The PostgreSQL client tools, fetched by the project's own module (a layer of its own, rebuilt
# only when shared/infra changes); each release's pg_dump, pg_restore, psql... answer --version.
COPY shared/infra /tmp/pgfetch/infra
RUN cd /tmp/pgfetch \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/managed-backups/bin/python -m \
        infra.postgres_binaries fetch --clients-only ${PG_CLIENT_MAJORS} \
    && chmod -R a+rX /opt/managed-backups/cache \
    && /opt/managed-backups/bin/python -m infra.postgres_binaries list \
    && cd / && rm -rf /tmp/pgfetch
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
