"""Peak memory and time of the cross-tokenizer loss, forward + backward: chunked against all-at-once.

Shapes of the real pair: teacher Gemma 3 270M (hidden 640, vocabulary 262,144), student SmolLM2-135M
(hidden 576, vocabulary 49,152), random weights (memory does not depend on their values). Groups are
synthetic but shaped like real alignments (mostly one token each side, some two). Each case runs in a
fresh process; peak memory is that process's max RSS growth during the case (CPU), or
torch.cuda.max_memory_allocated on a GPU. `xtok_loss_reference` is the plain version that builds the
logits of every position of both models at once.

    python benchmarks/bench_xtok_memory.py [--groups 300 --method gold --chunk 64 --json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

T_VOCAB, T_HIDDEN, S_VOCAB, S_HIDDEN = 262_144, 640, 49_152, 576


def _groups(n: int, pattern: list[int]):
    import torch

    sizes = [pattern[i % len(pattern)] for i in range(n)]
    ends = torch.tensor(sizes).cumsum(0) + 1  # token 0 (BOS) has no group
    return torch.stack([ends - torch.tensor(sizes), ends], 1), int(ends[-1])


def _current_rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _case(kind: str, groups: int, method: str, chunk: int, loss: str) -> dict:
    import torch

    from lmdistill.chunked import Head
    from lmdistill.xtok.losses import Side, XtokSpec, xtok_loss, xtok_loss_reference

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    s_groups, s_len = _groups(groups, [1, 1, 2, 1, 1])
    t_groups, t_len = _groups(groups, [1, 2, 1, 1, 1, 1])
    # normal_ in place: no 670 MB temporary that would lift the max RSS before the case starts
    s_w = torch.nn.Parameter(torch.empty(S_VOCAB, S_HIDDEN, device=device).normal_(0, 0.02))
    t_w = torch.empty(T_VOCAB, T_HIDDEN, device=device).normal_(0, 0.02)
    s_h = torch.randn(s_len, S_HIDDEN, device=device, requires_grad=True)
    t_h = torch.randn(t_len, T_HIDDEN, device=device)
    student = Side(
        s_h, Head(s_w), torch.randint(0, S_VOCAB, (s_len,), device=device), s_groups.to(device), S_VOCAB
    )
    teacher = Side(
        t_h, Head(t_w), torch.randint(0, T_VOCAB, (t_len,), device=device), t_groups.to(device), T_VOCAB
    )
    k = torch.randperm(S_VOCAB, device=device)[:46_145]  # as many shared tokens as the real pair has
    shared = (k, torch.randperm(T_VOCAB, device=device)[:46_145])
    spec = XtokSpec(method=method, loss=loss, chunk_size=chunk)
    fn = xtok_loss if kind == "chunked" else xtok_loss_reference
    before = _current_rss_kb()
    if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > before + 50 * 1024:
        raise RuntimeError("set-up left a higher max RSS than the current one: the peak would be hidden")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    sums = fn(student, teacher, spec, shared=shared)
    sums.total.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {
        "case": kind,
        "seconds": seconds,
        "peak_mb": peak_mb,
        "loss": sums.total.item(),
        "grad_norm": s_h.grad.norm().item(),
        "positions": {"student": s_len - 1, "teacher": t_len - 1},
        "device": device,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=300)
    ap.add_argument("--method", default="gold", choices=["gold", "uld"])
    ap.add_argument("--loss", default="jsd")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    shape = (a.groups, a.method, a.chunk, a.loss)
    if a.case:
        print(json.dumps(_case(a.case, *shape)))
        return
    flags = ["--groups", str(a.groups), "--method", a.method, "--chunk", str(a.chunk), "--loss", a.loss]
    rows = []
    for kind in ("naive", "chunked"):
        # A fixed glibc mmap threshold: freed blocks over 1 MiB go back to the OS at once, so RSS tracks
        # live tensors (glibc's default raises the threshold to 32 MiB and keeps freed chunks in the heap).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        out = subprocess.run(
            env=env,
            args=[sys.executable, __file__, "--case", kind, *flags],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    naive, chunked = rows
    print(
        f"xtok loss fwd+bwd, {a.method}/{a.loss}, {a.groups} groups, chunk {a.chunk} positions, teacher vocab {T_VOCAB}"
    )
    print(f"{'case':<10}{'s':>8}{'peak MB':>10}{'loss':>14}{'|grad|':>12}")
    for r in rows:
        print(
            f"{r['case']:<10}{r['seconds']:>8.1f}{r['peak_mb']:>10.0f}{r['loss']:>14.6f}{r['grad_norm']:>12.6f}"
        )
    ratios = {
        "memory_naive_over_chunked": naive["peak_mb"] / max(chunked["peak_mb"], 1e-9),
        "time_naive_over_chunked": naive["seconds"] / chunked["seconds"],
        "loss_rel_diff": abs(naive["loss"] - chunked["loss"]) / abs(naive["loss"]),
        "grad_norm_rel_diff": abs(naive["grad_norm"] - chunked["grad_norm"]) / abs(naive["grad_norm"]),
    }
    print(
        f"naive/chunked: memory {ratios['memory_naive_over_chunked']:.1f}x, time {ratios['time_naive_over_chunked']:.2f}x; "
        f"loss rel. diff {ratios['loss_rel_diff']:.1e}, grad-norm rel. diff {ratios['grad_norm_rel_diff']:.1e}"
    )
    import torch

    result = {
        "rows": rows,
        "ratios": ratios,
        "args": vars(a),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
