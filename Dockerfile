#
# harvester's production image:
#   docker build -t harvester .
#   docker run --rm -e HARVESTER_DATABASE_URL=... -e HARVESTER_API_TOKEN=... harvester
#
# Behind a TLS-intercepting proxy or with a private package index (both build arguments
# of the builder stage only; the image itself carries neither):
#   docker build --build-arg PIP_INDEX_URL=https://pypi.example.internal/simple \
#                --build-arg EXTRA_CA_PEM="$(cat /usr/local/share/ca-certificates/*.crt)" .
# Build arguments show in the build's output: an index that needs a password gets it
# from a netrc file passed as a secret, which no log, layer or cache keeps:
#                --secret id=netrc,src=$HOME/.netrc
#
# There is no `# syntax=` line on purpose: the Dockerfile frontend built into the engine
# reads this file, and a syntax line would make every BuildKit build pull a frontend
# image from a registry first. The build needs the base image and the package index,
# nothing else.
#
# Two stages. The builder installs the runtime dependencies exactly as uv.lock pins them
# (hash-checked, wheels only) into /opt/venv, then builds harvester's wheel (sql/ travels
# inside it as harvester/sql) with the build backend the lock pins, and installs it. The
# final stage is the same base with that venv copied in: no compiler, no uv, no source
# tree, no `embedded` extra (production always sets HARVESTER_DATABASE_URL). Both stages
# use the same base, so the venv's interpreter symlink resolves in the final one. Pin the
# base by digest in your registry: --build-arg BASE_IMAGE=registry/python@sha256:...

ARG BASE_IMAGE=python:3.11-slim-bookworm

############################################################################ builder
FROM ${BASE_IMAGE} AS builder

# Where packages come from and which extra CA certificates (PEM text) their TLS may chain
# to. Declared in this stage only: the runtime stage never sees them.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG EXTRA_CA_PEM=
# The uv that reads uv.lock: the version .ci/run uses.
ARG UV_VERSION=0.13.9

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/build/ca.pem \
    SSL_CERT_FILE=/build/ca.pem \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    PYTHONDONTWRITEBYTECODE=1

# The base image's CA bundle plus EXTRA_CA_PEM, for pip and uv in this stage. Both read
# /root/.netrc for index credentials: the optional secret `netrc` is mounted there.
RUN --mount=type=secret,id=netrc,target=/root/.netrc \
    mkdir /build \
 && cat /etc/ssl/certs/ca-certificates.crt > /build/ca.pem \
 && printf '%s\n' "$EXTRA_CA_PEM" >> /build/ca.pem \
 && python -m venv /build/tools \
 && /build/tools/bin/pip install --quiet --index-url "$PIP_INDEX_URL" "uv==${UV_VERSION}"

WORKDIR /src

# The third-party dependencies first, from the lock alone: this layer is rebuilt only
# when uv.lock or pyproject.toml change. --locked fails the build if the lock is stale.
# The export lists name==version with every hash; --require-hashes makes the install
# refuse anything else, --only-binary that nothing is compiled here.
COPY pyproject.toml uv.lock ./
RUN --mount=type=secret,id=netrc,target=/root/.netrc \
    /build/tools/bin/uv export --locked --no-dev --no-emit-project --no-header \
        --format requirements.txt --output-file /build/runtime.txt \
 && /build/tools/bin/uv export --locked --only-group build --no-emit-project --no-header \
        --format requirements.txt --output-file /build/build.txt \
 && python -m venv --without-pip /opt/venv \
 && /build/tools/bin/uv pip install --python /opt/venv/bin/python --index-url "$PIP_INDEX_URL" \
        --require-hashes --only-binary :all: --no-deps --requirement /build/runtime.txt

# Then harvester itself: a wheel built with the locked hatchling, installed without
# dependencies. The check runs from / so that it imports the installed package, not
# /src/harvester: the migrations must come from harvester/sql inside the wheel.
COPY README.md ./
COPY sql/ sql/
COPY harvester/ harvester/
RUN --mount=type=secret,id=netrc,target=/root/.netrc \
    /build/tools/bin/uv build --wheel --out-dir /build/wheels --index-url "$PIP_INDEX_URL" \
        --build-constraints /build/build.txt --require-hashes \
 && /build/tools/bin/uv pip install --python /opt/venv/bin/python --no-deps /build/wheels/harvester-*.whl \
 && cd / \
 && /opt/venv/bin/python -c "from harvester.migrations import migrations_dir, load_migrations; d = migrations_dir(); assert d.parent.name == 'harvester' and load_migrations(d), f'no migrations packaged: {d}'" \
 && /opt/venv/bin/harvester --version

############################################################################ runtime
FROM ${BASE_IMAGE} AS runtime

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
# was byte-compiled in the builder. No HARVESTER_ADMIN_HOST here: the daemon's default,
# loopback, is what the HEALTHCHECK needs, and it keeps /metrics and the write API off
# every host interface under `docker run --network host`. Where probes or a scrape come
# from outside the container, say so: HARVESTER_ADMIN_HOST=0.0.0.0 (the Kubernetes
# ConfigMap and deploy/compose.yaml do).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    HARVESTER_LOG_FORMAT=json

# The settings also read a .env from the working directory: this one is empty and owned
# by root (made before USER, so even BuildKit makes it root's), so only root (a bind
# mount, a derived image) can put a .env there. Not /tmp, where any user could.
WORKDIR /app
USER 10001:10001
EXPOSE 8080

# For docker and compose (Kubernetes ignores it and uses the Deployment's probes).
# `harvester healthcheck` asks /healthz where the daemon really listens: the same
# settings (environment, .env) plus the daemon's own --admin-host/--admin-port. The
# start period covers waiting for the database and running migrations.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["harvester", "healthcheck"]

# The daemon handles SIGTERM itself (stop claiming, finish in-flight requests within
# HARVESTER_SHUTDOWN_GRACE, flush writes); it runs as PID 1 and starts no children.
STOPSIGNAL SIGTERM
ENTRYPOINT ["harvester"]
CMD ["run"]
