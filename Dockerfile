# syntax=docker/dockerfile:1
# One image for the worker and the producer: `messaging-metrics` is the entry point.
#   docker build -t messaging-metrics .
#   docker run messaging-metrics            # the worker (CMD)
#   docker run messaging-metrics produce    # the synthetic producer
# Settings come from the environment (README "Settings"); KAFKA_BOOTSTRAP_SERVERS is needed.

FROM python:3.11-slim AS build
# uv pinned like the Makefile's UV_VERSION; it stays in this stage
RUN pip install --no-cache-dir "uv==0.13.8"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# the locked dependencies first: this layer is rebuilt only when the lock changes
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
# then the project itself, installed into the venv (not editable: the venv is all we ship)
COPY README.md ./
COPY streams/ streams/
COPY producers/ producers/
COPY deploy/ deploy/
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
       --shell /usr/sbin/nologin app
COPY --from=build /app/.venv /app/.venv
# METRICS_HOST: /metrics and /healthz must be reachable from other containers (Prometheus)
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=6066
# non-root; the worker's state (CACHE_DIR, Faust's data dir) lives under its home
USER 10001:10001
WORKDIR /home/app
EXPOSE 6066
# no curl in slim: python's urllib; any HTTP error or refused connection fails the check.
# Only the worker serves /healthz: docker-compose.yml gives the producer its own check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["messaging-metrics"]
CMD ["worker"]
