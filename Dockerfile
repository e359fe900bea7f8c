# One image for every managed-backups service; compose.yaml picks the service per container:
#   managed-backups service <name>
# python:3.11-slim follows Debian stable, whose postgresql-client (pg_dump, pg_basebackup, psql)
# must be at least as new as the PostgreSQL servers being backed up.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Only what the distribution needs: no .venv, .git or test data in the image.
COPY pyproject.toml README* ./
COPY contracts ./contracts
COPY shared ./shared
COPY services ./services
COPY managed_backups ./managed_backups
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --no-create-home mb \
    && mkdir -p /data \
    && chown mb:mb /data

USER mb
ENV MANAGED_BACKUPS_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["managed-backups"]
CMD ["--help"]
