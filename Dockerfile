# syntax=docker/dockerfile:1
#
# harvester's production image: `docker build -t harvester .` then
#   docker run --rm -e HARVESTER_DATABASE_URL=... -e HARVESTER_API_TOKEN=... -p 8080:8080 harvester
#
# Two stages. The builder turns this checkout into a wheel (sql/ travels inside it as
# harvester/sql, see pyproject.toml) and installs it with its runtime dependencies into
# /opt/venv. The final stage is a plain python:3.11-slim with that venv copied in: no
# compiler, no pip, no source tree, no `embedded` extra (production always sets
# HARVESTER_DATABASE_URL). Both stages use the same base image, so the venv's interpreter
# symlink (/opt/venv/bin/python -> /usr/local/bin/python3.11) resolves in the final one.
# Pin the base by digest (python:3.11-slim-bookworm@sha256:...) in your registry mirror.

############################################################################ builder
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the tree out).
COPY pyproject.toml README.md ./
COPY sql/ sql/
COPY harvester/ harvester/

# Every runtime dependency ships manylinux wheels for CPython 3.11 (asyncpg, aiohttp,
# pydantic-core, ...), so nothing is compiled here; --only-binary makes that a promise
# for the dependencies rather than a hope. The project's own wheel is built from source.
# The check runs from / so that it imports the installed package, not /src/harvester:
# the migrations must come from harvester/sql inside the wheel.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: /wheels/harvester-*.whl \
 && cd / \
 && /opt/venv/bin/python -c "from harvester.migrations import migrations_dir, load_migrations; d = migrations_dir(); assert d.parent.name == 'harvester' and load_migrations(d), f'no migrations packaged: {d}'" \
 && /opt/venv/bin/harvester --version \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

############################################################################ runtime
FROM python:3.11-slim-bookworm AS runtime

ARG HARVESTER_UID=10001
LABEL org.opencontainers.image.title="harvester" \
      org.opencontainers.image.description="Mirrors justcrawl extraction results into PostgreSQL" \
      org.opencontainers.image.source="https://github.com/justcrawl/harvester" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, non-root UID/GID (the Kubernetes securityContext uses the same numbers), no
# login shell, no home directory: the daemon writes nothing outside the database.
RUN groupadd --system --gid "${HARVESTER_UID}" harvester \
 && useradd --system --uid "${HARVESTER_UID}" --gid "${HARVESTER_UID}" \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin harvester

COPY --from=builder /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in Kubernetes and the venv
# was byte-compiled in the builder. HARVESTER_ADMIN_HOST=0.0.0.0: the probes and the
# Prometheus scrape come from outside the container (the daemon's default is loopback).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    HARVESTER_ADMIN_HOST=0.0.0.0 \
    HARVESTER_ADMIN_PORT=8080 \
    HARVESTER_LOG_FORMAT=json

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# For docker and compose (Kubernetes ignores it and uses the Deployment's probes). The
# slim image has no curl: the standard library asks /healthz, any non-2xx or no answer
# is a failure. start-period covers waiting for the database and running migrations.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HARVESTER_ADMIN_PORT', '8080') + '/healthz', timeout=4)"]

# The daemon handles SIGTERM itself (stop claiming, finish in-flight requests within
# HARVESTER_SHUTDOWN_GRACE, flush writes); it runs as PID 1 and starts no children.
STOPSIGNAL SIGTERM
ENTRYPOINT ["harvester"]
CMD ["run"]
