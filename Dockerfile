# syntax=docker/dockerfile:1
# The API image: `docker compose up` (docker-compose.yml) or `docker build -t todo-api .`

# --- Explorer assets: Swagger UI and GraphiQL from npm, served by the app (no CDN) ---
FROM node:22-bookworm-slim AS explorer-assets
WORKDIR /build
COPY package.json package-lock.json .npmrc ./
COPY scripts/explorer-assets.sh scripts/
RUN sh scripts/explorer-assets.sh

# --- The API ---
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, in their own layer: rebuilt when pyproject.toml changes, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY backend ./backend
COPY --from=explorer-assets /build/.assets ./.assets

ENV APP_ENV=production \
    PORT=8000 \
    WEB_CONCURRENCY=2 \
    FORWARDED_ALLOW_IPS=127.0.0.1 \
    LOG_FORMAT=json \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/health\", timeout=2)"]

# The metrics directory is emptied at each start: stale files from a previous run would add up.
# The app applies proxy headers itself (trusted only from FORWARDED_ALLOW_IPS, whatever server runs it),
# so uvicorn's copy of that middleware is off; no Server header; the app logs each request itself.
CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec uvicorn backend.main:app --host 0.0.0.0 --port \"$PORT\" --workers \"$WEB_CONCURRENCY\" --no-proxy-headers --no-server-header --no-access-log"]
