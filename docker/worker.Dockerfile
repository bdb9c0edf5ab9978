# syntax=docker/dockerfile:1
#
# loraq worker: model + adapter cache + batcher behind a Celery consumer. Two variants, chosen by
# the VARIANT build argument (build from the repository root):
#
#   docker build -f docker/worker.Dockerfile -t loraq-worker:cpu .
#   docker build -f docker/worker.Dockerfile --build-arg VARIANT=cuda -t loraq-worker:cuda .
#
# cpu:  torch from PyTorch's CPU-only index (https://download.pytorch.org/whl/cpu): ~200 MB of
#       torch instead of several GB of CUDA libraries nobody would use.
# cuda: torch from the default index (PyPI). Its Linux x86_64 wheels are CUDA builds that bring
#       the CUDA runtime, cuBLAS and cuDNN as nvidia-* wheels, so no nvidia/cuda base image is
#       needed: the host needs only the NVIDIA driver and the NVIDIA container toolkit (Docker:
#       `--gpus`/compose `deploy.resources.reservations.devices`; Kubernetes: the device
#       plugin and an `nvidia.com/gpu` limit). For another CUDA line, point TORCH_INDEX_URL at
#       e.g. https://download.pytorch.org/whl/cu128.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ARG VARIANT=cpu
# Kept equal to the Makefile's pin: the version the test suite runs against.
ARG TORCH_VERSION=2.13.0
# Empty: derived from VARIANT (see the header).
ARG TORCH_INDEX_URL=

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# torch alone first: the biggest layer, and the only one that differs between the variants. The
# constraint file then stops the dependency install below from replacing it with another build.
RUN set -eu; \
    case "$VARIANT" in \
      cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL:-}" ;; \
      *)    echo "VARIANT must be 'cpu' or 'cuda', not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install --no-cache-dir ${index:+--index-url "$index"} "torch==${TORCH_VERSION}"; \
    echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt

# The dependencies of the `worker` extra and of `demo` (`loraq adapters demo` fine-tunes the
# demo adapters in this image), in a layer of their own so that a code-only change does not
# reinstall them: pip resolves the extras from the two projects' metadata alone (their code is
# not here yet, so it also installs two empty packages, replaced below); loraq's loraq-client
# requirement is met by the local client, which is not on PyPI.
COPY pyproject.toml README.md ./
COPY clients/python/pyproject.toml clients/python/README.md ./clients/python/
RUN pip install --no-cache-dir -c /tmp/constraints.txt ./clients/python ".[worker,demo,s3]"

COPY clients/python ./clients/python
COPY api ./api
COPY common ./common
COPY webhooks ./webhooks
COPY loraq ./loraq
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps --force-reinstall -c /tmp/constraints.txt \
        ./clients/python . \
    && pip check \
    && python -c "import torch, worker.encode_worker, loraq.cli; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VARIANT=cpu
LABEL org.opencontainers.image.title="loraq-worker" \
      org.opencontainers.image.description="loraq encode worker (${VARIANT})"

# NVIDIA_DRIVER_CAPABILITIES is read by the NVIDIA container toolkit only (ignored everywhere
# else): it mounts the compute libraries, not only nvidia-smi, into a non-nvidia/cuda image.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/loraq \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Fixed numeric uid (runAsNonRoot can check it). /adapters and /adapter-store are created owned
# by that user so a fresh named volume mounted there inherits the ownership (`loraq adapters demo`
# writes /adapters; the gateway writes the registry's /adapter-store, whoever mounts it first).
RUN groupadd --system --gid 10001 loraq \
    && useradd --system --uid 10001 --gid loraq --create-home --home-dir /home/loraq loraq \
    && install -d -o loraq -g loraq /adapters /adapter-store

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
# Relative defaults (the adapter disk cache `.loraq/adapter-cache`) land in the user's home.
WORKDIR /home/loraq

# Celery's warm shutdown: stop consuming, release shard leases, finish the jobs in flight, exit.
# Give the container at least the longest job's time to do it (compose stop_grace_period,
# Kubernetes terminationGracePeriodSeconds); a SIGKILL before that leaves jobs to redelivery.
STOPSIGNAL SIGTERM
# Liveness here means "a loraq worker process exists": the worker has no HTTP port to probe, and
# its real health (a heartbeat every LORAQ_WORKER__HEARTBEAT_S) is judged where it matters: the
# gateway stops routing to a worker after three missed heartbeats and its shard leases expire.
# Scanning /proc rather than trusting PID 1 keeps this right under `docker run --init`; matching
# "loraq" and "worker" also matches Celery's process title if setproctitle is ever installed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys\ndef cmdline(pid):\n    try:\n        return open(f'/proc/{pid}/cmdline', 'rb').read()\n    except OSError:\n        return b''\nsys.exit(not any(b'loraq' in c and b'worker' in c for c in map(cmdline, (p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()))))"]

ENTRYPOINT ["loraq"]
CMD ["worker"]
