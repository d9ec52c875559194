"""Peak memory and time of the KD loss, forward + backward: chunked (lmdistill) against full logits.

Each case runs in a fresh process; peak memory is that process's max RSS growth during the case
(CPU), or torch.cuda.max_memory_allocated on a GPU. Same loss code both ways: `full_logits_loss`
is the plain reference that materialises [tokens, vocab] logits for both models.

    python benchmarks/bench_chunked_loss.py [--tokens 2048 --hidden 576 --vocab 49152 --chunk 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _case(kind: str, tokens: int, hidden: int, vocab: int, chunk: int, loss: str, repeats: int) -> dict:
    import torch

    from lmdistill.chunked import Head, LossSpec, chunked_loss, full_logits_loss

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    s_w = torch.nn.Parameter(torch.randn(vocab, hidden, device=device) * 0.02)
    t_w = torch.randn(vocab, hidden, device=device) * 0.02
    s_h = torch.randn(tokens, hidden, device=device, requires_grad=True)
    t_h = torch.randn(tokens, hidden, device=device)
    labels = torch.randint(0, vocab, (tokens,), device=device)
    spec = LossSpec(loss=loss, ce_weight=0.5, kd_weight=0.5, vocab=vocab, chunk_size=chunk)
    fn = chunked_loss if kind == "chunked" else full_logits_loss
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sums = fn(s_h, Head(s_w), labels, spec, t_h, Head(t_w))
        sums.total.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        value = sums.total.item()
        s_h.grad = None
        s_w.grad = None
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"case": kind, "ms": 1000 * min(times), "peak_mb": peak_mb, "loss": value, "device": device}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--loss", default="forward_kl")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    shape = (a.tokens, a.hidden, a.vocab, a.chunk, a.loss, a.repeats)
    if a.case:
        print(json.dumps(_case(a.case, *shape)))
        return
    names = ("tokens", "hidden", "vocab", "chunk", "loss", "repeats")
    flags = [x for name, value in zip(names, shape, strict=True) for x in (f"--{name}", str(value))]
    rows = []
    for kind in ("naive", "chunked"):
        cmd = [sys.executable, __file__, "--case", kind, *flags]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    naive, chunked = rows
    import torch

    print(
        f"KD loss fwd+bwd, {a.loss}, tokens {a.tokens}, hidden {a.hidden}, vocab {a.vocab}, chunk {a.chunk}"
    )
    print(f"{'case':<10}{'ms':>10}{'peak MB':>12}{'loss':>14}")
    for r in rows:
        print(f"{r['case']:<10}{r['ms']:>10.1f}{r['peak_mb']:>12.1f}{r['loss']:>14.6f}")
    ratios = {
        "memory_naive_over_chunked": naive["peak_mb"] / max(chunked["peak_mb"], 1e-9),
        "time_naive_over_chunked": naive["ms"] / chunked["ms"],
        "loss_rel_diff": abs(naive["loss"] - chunked["loss"]) / abs(naive["loss"]),
    }
    print(
        f"naive/chunked: memory {ratios['memory_naive_over_chunked']:.1f}x, "
        f"time {ratios['time_naive_over_chunked']:.2f}x; loss rel. diff {ratios['loss_rel_diff']:.1e}"
    )
    result = {
        "rows": rows,
        "ratios": ratios,
        "args": vars(a),
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
