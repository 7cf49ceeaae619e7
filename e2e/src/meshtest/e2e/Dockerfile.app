# syntax=docker/dockerfile:1
# app: the echo test app (meshtest.echo), upstream's "<hub>/app" image for the e2e suite on kind. Build from
# the repository root:  docker build -f e2e/src/meshtest/e2e/Dockerfile.app -t <hub>/app:<tag> .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY proto/pyproject.toml proto/
COPY lib/pyproject.toml lib/
COPY services/istiod/pyproject.toml services/istiod/
COPY services/ztunnel/pyproject.toml services/ztunnel/
COPY services/cni/pyproject.toml services/cni/
COPY services/waypoint/pyproject.toml services/waypoint/
COPY e2e/pyproject.toml e2e/
RUN uv sync --frozen --no-dev --no-install-workspace --package ambient-e2e
COPY proto/ proto/
COPY lib/ lib/
COPY e2e/ e2e/
RUN uv sync --frozen --no-dev --no-editable --package ambient-e2e

FROM ${PYTHON_IMAGE}
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# `server` and `client` on PATH, as in upstream's image (a Pod may name either as its command; the local
# cluster's image table, meshtest.cluster.images, maps the same two names)
RUN printf '#!/bin/sh\nexec python -m meshtest.echo server "$@"\n' >/usr/local/bin/server \
    && printf '#!/bin/sh\nexec python -m meshtest.echo client "$@"\n' >/usr/local/bin/client \
    && chmod 755 /usr/local/bin/server /usr/local/bin/client
# upstream's echo app runs as uid 1338
USER 1338:1338
# As PID 1 the server would ignore SIGTERM (it installs no handler), so every pod deletion would wait out the
# grace period; SIGINT is Python's KeyboardInterrupt, on which it closes its listeners and exits.
STOPSIGNAL SIGINT
ENTRYPOINT ["python", "-m", "meshtest.echo", "server"]
