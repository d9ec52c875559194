#!/usr/bin/env bash
# The GPU benchmark on an offline GPU machine, from the repository root (a copy of the working tree):
#
#   bash benchmarks/gpu/run_gpu.sh
#
# 1. checks that python3's torch sees a CUDA device (stops with a message if not);
# 2. installs the wheels in benchmarks/gpu/wheels/ (made by fetch_wheels.sh where PyPI is reachable),
#    if that folder is there, into a private folder put first on PYTHONPATH: no index, no dependencies
#    resolved, the image's torch untouched;
# 3. puts this tree's src/ on PYTHONPATH (lmdistill needs no build for the benchmark; `pip install -e .`
#    would need setuptools from an index through build isolation, which an offline machine lacks);
# 4. imports what the cases need and says which peers will run;
# 5. runs bench_gpu.py (budget BUDGET_S seconds, default 240) writing $OUT/gpu_results.json,
#    $OUT/cases.log (every case's own output) and $OUT/run.log (this script's output);
# 6. then, in a second call with its own budget (SAMPLER_BUDGET_S, default 300; 0 skips it), the `sampler`
#    group: vLLM against batched generate on this GPU, into $OUT/sampler_results.json and
#    $OUT/sampler_cases.log. It needs a vLLM that the image's python imports (a vLLM wheel is too big to
#    carry; LMDISTILL_VLLM_PYTHON names another python) and SmolLM2's tokenizer, carried in
#    benchmarks/gpu/wheels/smollm2-135m by fetch_wheels.sh; without either it records why and skips.
#
# Environment: OUT (default /tmp/lmdistill_gpu_out), PYTHON (default python3), BUDGET_S, ONLY (groups:
# then only that one call runs, the sampler group too if named), SAMPLER_BUDGET_S, SITE (where wheels go,
# default /tmp/lmdistill_site), SMOKE=1 (CPU, tiny shapes: tests this script).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${OUT:-/tmp/lmdistill_gpu_out}"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/lmdistill_site}"
mkdir -p "$OUT"

main() {
t0=$(date +%s)
echo "== lmdistill GPU benchmark: $(date -u +%FT%TZ) on $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi -L

echo "== 1. torch and CUDA"
"$PY" - <<'EOF' || { echo "run_gpu: python3's torch cannot be imported; nothing to do" >&2; return 2; }
import sys, torch
print(f"python {sys.version.split()[0]} at {sys.executable}; torch {torch.__version__}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    x = torch.ones(1024, 1024, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    print(f"CUDA works: {torch.cuda.get_device_name(0)}, {float((x @ x)[0, 0])} == 1024.0")
else:
    print("CUDA: not available")
EOF
if [[ "${SMOKE:-0}" != 1 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "run_gpu: torch sees no CUDA device here; this benchmark needs one (SMOKE=1 runs the tiny CPU version)" >&2
  return 2
fi

echo "== 2. wheels"
wheels=benchmarks/gpu/wheels
if compgen -G "$wheels/*.whl" >/dev/null; then
  # Names, not files: pip then picks the build that fits this Python (multiprocess has one per version).
  names=$(for f in "$wheels"/*.whl; do basename "$f" | cut -d- -f1; done | sort -u | tr '\n' ' ')
  echo "installing into $SITE: $names"
  rm -rf "$SITE"
  # shellcheck disable=SC2086
  if ! "$PY" -m pip install --quiet --no-index --find-links "$wheels" --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$SITE" $names; then
    echo "run_gpu: installing the wheels failed; going on with what the image has" >&2
  fi
  export PYTHONPATH="$SITE:${PYTHONPATH:-}"
else
  echo "no wheels in $wheels: the image's packages only (trl/liger cases are skipped if missing)"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"

echo "== 3. imports"
"$PY" - <<'EOF' || { echo "run_gpu: transformers or lmdistill cannot be imported (see above)" >&2; return 3; }
import importlib, os
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
import transformers, lmdistill.chunked, lmdistill.training.trainer  # noqa: the benchmark's own needs
print(f"transformers {transformers.__version__} from {os.path.dirname(transformers.__file__)}")
print(f"lmdistill from {os.path.dirname(lmdistill.chunked.__file__)}")
for mod in ("datasets", "trl.experimental.gkd", "liger_kernel.chunked_loss", "liger_kernel.transformers"):
    try:
        m = importlib.import_module(mod)
        top = importlib.import_module(mod.split(".")[0])
        print(f"peer ok: {mod} ({getattr(top, '__version__', '?')})")
    except Exception as e:  # reported, not fatal: the benchmark records the case as skipped
        print(f"peer MISSING: {mod}: {type(e).__name__}: {e}")
EOF

echo "== 4. benchmark (budget ${BUDGET_S:-240} s)"
args=(--out "$OUT/gpu_results.json" --log "$OUT/cases.log" --budget-s "${BUDGET_S:-240}")
[[ -n "${ONLY:-}" ]] && args+=(--only "$ONLY")
[[ "${SMOKE:-0}" == 1 ]] && args+=(--smoke)
PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu/bench_gpu.py "${args[@]}"
rc=$?

if [[ -z "${ONLY:-}" && "${SAMPLER_BUDGET_S:-300}" != 0 ]]; then
  echo "== 5. sampler: vLLM against generate (budget ${SAMPLER_BUDGET_S:-300} s)"
  sargs=(--only sampler --out "$OUT/sampler_results.json" --log "$OUT/sampler_cases.log"
    --budget-s "${SAMPLER_BUDGET_S:-300}")
  [[ "${SMOKE:-0}" == 1 ]] && sargs+=(--smoke)
  PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu/bench_gpu.py "${sargs[@]}"
  src=$?
  ((rc == 0)) && rc=$src
fi
echo "== done in $(($(date +%s) - t0)) s (exit $rc); files: $(ls "$OUT" | tr '\n' ' ')"
return $rc
}

main 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
