"""What a model costs, measured the same way for every model.

* parameters: `count_parameters` (tied weights once).
* size on disk: the weight files (`*.safetensors`, `pytorch_model*.bin`, `*.gguf`) in the model's
  folder (a short name's converted folder; a hub id's local snapshot when it is cached).
* peak memory: measured in a separate process started with multiprocessing "spawn", so the numbers
  do not depend on what the evaluating process already holds. The child imports torch and
  transformers, notes its resident memory, loads the model and runs one forward over the same fixed
  batch used for prefill, and reports the growth of its peak resident memory (Linux: VmHWM, reset
  per model through /proc/self/clear_refs so one child measures every model; elsewhere: one child
  per model and `resource.getrusage` ru_maxrss). The smallest model is loaded and run once first,
  unmeasured, so transformers' lazily imported code is not charged to the first model. On CUDA the peak allocated GPU memory is reported
  too (torch.cuda.max_memory_allocated).
* prefill tokens/s: tokens in the fixed batch / seconds of one forward over it (median of 3, after
  an untimed warm-up forward over the same batch).
* generation tokens/s: generated tokens / seconds of batched greedy generation over the task prompts.
* latency p50/p95: seconds per request, one request at a time, over the task prompts.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lmdistill.eval.measure import PeakMemory, reset_peak_rss, trim

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")


def weights_folder(resolved: str) -> Path | None:
    """The local folder holding a model's weights: the folder itself, or a cached hub snapshot."""
    path = Path(resolved)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, local_files_only=True))
    except Exception:
        return None


def disk_size(folder: str | Path | None) -> int | None:
    """Bytes of the weight files directly in `folder` (links followed); None when unknown or none."""
    if folder is None:
        return None
    folder = Path(folder)
    files = {f.resolve() for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()}
    return sum(f.stat().st_size for f in files) if files else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def prefill_tokens_per_s(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, repeats: int = 3
) -> float:
    """Tokens per second of one forward over a fixed batch: the median of `repeats` timed forwards
    after one untimed warm-up forward over the same batch (so lazy initialisation is not timed)."""
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    model.eval()
    times = []
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        model(input_ids=input_ids, attention_mask=attention_mask)
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    elapsed = sorted(times)[len(times) // 2]
    return int(attention_mask.sum().item()) / max(elapsed, 1e-9)


# ---- peak memory, in a spawned child ------------------------------------------------------------


def _measure_child(jobs: list[tuple[str, str, str, list[list[int]], list[list[int]]]]) -> list[dict]:
    """Runs in the spawned child: for each (path, dtype, device, ids, mask) load + one forward."""
    import transformers  # noqa: F401  (imported before the baseline, like torch)

    from lmdistill.models import load_model

    def load_and_forward(path, dtype, device, ids, mask):
        dev = torch.device(device)
        model = load_model(path, dtype=dtype, device=device, quantized=True)
        model.eval()
        with torch.no_grad():
            model(input_ids=torch.tensor(ids, device=dev), attention_mask=torch.tensor(mask, device=dev))
        return model

    # Warm-up: transformers imports much of its loading and modelling code lazily on the first
    # load (over 100 MB on CPU), which would be charged to whichever model came first. Load and run
    # the smallest model once, unmeasured, so every measured model starts from the same state.
    smallest = min(jobs, key=lambda j: disk_size(weights_folder(j[0])) or 0)
    load_and_forward(*smallest[:3], smallest[3][:1], smallest[4][:1])

    out = []
    for path, dtype, device, ids, mask in jobs:
        trim()
        rss = PeakMemory("cpu")
        rss.start()
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        model = load_and_forward(path, dtype, device, ids, mask)
        result = {"peak_rss_bytes": rss.peak_bytes(), "method": rss.method}
        if dev.type == "cuda":
            result["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        out.append(result)
        del model
    return out


def peak_memory(jobs: list[tuple[str, str, str, list[list[int]], list[list[int]]]]) -> list[dict]:
    """Peak memory growth for each job (path, dtype, device, input_ids, attention_mask), in fresh
    spawned processes: one for all models where the peak can be reset (Linux), else one per model."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not jobs:
        return []
    ctx = multiprocessing.get_context("spawn")
    groups = [jobs] if reset_peak_rss() else [[j] for j in jobs]  # resetting our own peak is harmless
    results: list[dict] = []
    for group in groups:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results.extend(pool.submit(_measure_child, group).result())
    return results
