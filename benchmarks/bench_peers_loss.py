"""The KD loss, forward + backward: lmdistill's chunked loss against the naive one and Liger-Kernel's.

What is measured: CE + forward KL (0.5 each, temperature 1) through the student's and the
teacher's output heads, forward and backward, for N target tokens of hidden size H and vocabulary
V in float32 (default 2048 x 576 x 49152, the embedded SmolLM2's head). Variants:

- naive: `lmdistill.chunked.full_logits_loss`, the plain reference that materialises the
  [N, V] logits of both models and lets autograd keep what it needs;
- lmdistill: `lmdistill.chunked.chunked_loss` at 256 and 1024 tokens per chunk;
- liger: Liger-Kernel's `LigerFusedLinearJSDLoss` with beta = 0 (its forward KL:
  KL(teacher || student)), the same CE weight and temperature, chunk 1024 (its default), once
  eager (`compiled=False`) and once with `torch.compile` (its default, `compiled=True`).
  Its chunked losses are plain PyTorch (`torch.func.grad_and_value` per chunk); they need
  neither Triton nor a GPU, so they run here on the CPU. Liger divides by the number of target
  tokens; lmdistill returns sums, so its values and gradients are divided by N to compare.

How: each variant runs in its own worker process (same seed, same inputs). Before timing, each
worker runs the loss once (warm-up; for the compiled variant this includes compilation) and
reports the loss and a gradient probe (the gradients' dot product with fixed random tensors); the
driver checks that every variant agrees with the naive loss. Then the driver asks the workers for
one call each in turn, A B C A B C ..., so a load change on the shared CPU hits all variants
alike; a worker idles while another runs. Time: median of the timed calls. Peak memory: growth of
the worker's peak RSS (VmHWM, reset through /proc/self/clear_refs) over its RSS just before the
timed calls, i.e. what the loss needs at steady state; the first call's peak (over the RSS after
building the inputs, compilation included) is reported too. On a GPU the CUDA allocator's peak is
used instead. Load average (os.getloadavg) is recorded before and after: other jobs share this CPU.

    python benchmarks/bench_peers_loss.py [--tokens 2048 --hidden 576 --vocab 49152 --repeats 3]
    python benchmarks/bench_peers_loss.py --quick        # small shapes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from lmdistill.eval.measure import (
    PeakMemory,
    Worker,
    command_line,
    load_line,
    machine_info,
    reply,
    table,
    versions,
)

RESULT = "benchmarks/results/peers_loss.json"
# name -> (implementation, chunk size, compiled)
VARIANTS = {
    "naive": ("naive", 0, False),
    "lmdistill-256": ("lmdistill", 256, False),
    "lmdistill-1024": ("lmdistill", 1024, False),
    "liger-1024": ("liger", 1024, False),
    "liger-1024-compiled": ("liger", 1024, True),
}
CE_WEIGHT = KD_WEIGHT = 0.5
# Between calls: the previous worker's OpenMP threads spin for a while after its call returns, and
# would otherwise steal the CPU from the next worker's timed call.
PAUSE_S = 1.0


def liger_unavailable() -> str | None:
    """None if Liger-Kernel's chunked losses import here, else why not."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss  # noqa: F401
    except ImportError as e:
        return (
            f"liger-kernel is not installed in this environment ({e}); run benchmarks/setup_peers.sh "
            "and use .venv-bench/bin/python"
        )
    return None


def _make_loss(variant: str, vocab: int):
    """A function (s_h, s_w, t_h, t_w, labels) -> loss per target token, differentiable."""
    impl, chunk, compiled = VARIANTS[variant]
    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        # beta = 0 is Liger's (and TRL's) forward KL: kl_div(student_logp, teacher_logp) = KL(p_t || p_s).
        fn = LigerFusedLinearJSDLoss(
            weight_hard_loss=CE_WEIGHT,
            weight_soft_loss=KD_WEIGHT,
            beta=0.0,
            temperature=1.0,
            compiled=compiled,
            chunk_size=chunk,
        )
        return lambda s_h, s_w, t_h, t_w, labels: fn(s_h, s_w, t_h, t_w, labels)

    from lmdistill.chunked import Head, LossSpec, chunked_loss, full_logits_loss

    spec = LossSpec(
        loss="forward_kl",
        ce_weight=CE_WEIGHT,
        kd_weight=KD_WEIGHT,
        temperature=1.0,
        vocab=vocab,
        chunk_size=chunk or 256,
    )
    loss_fn = full_logits_loss if impl == "naive" else chunked_loss

    def run(s_h, s_w, t_h, t_w, labels):
        return loss_fn(s_h, Head(s_w), labels, spec, t_h, Head(t_w)).total / s_h.shape[0]

    return run


def worker(variant: str, tokens: int, hidden: int, vocab: int, threads: int) -> None:
    """Serve the driver: warm up, then one timed call per 'run' line; 'done' reports the peak."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    s_w = torch.nn.Parameter(torch.randn(vocab, hidden, device=device) * 0.02)
    t_w = torch.randn(vocab, hidden, device=device) * 0.02
    s_h = torch.randn(tokens, hidden, device=device, requires_grad=True)
    t_h = torch.randn(tokens, hidden, device=device)
    labels = torch.randint(0, vocab, (tokens,), device=device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    probe_h = torch.randn(tokens, hidden, generator=gen).to(device)
    probe_w = torch.randn(vocab, hidden, generator=gen).to(device)
    fn = _make_loss(variant, vocab)
    mem = PeakMemory(device)

    def call() -> tuple[float, float]:
        t0 = time.perf_counter()
        loss = fn(s_h, s_w, t_h, t_w, labels)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, loss.item()

    reply({"built": True})
    if sys.stdin.readline().strip() != "warmup":
        return
    mem.start()
    seconds, value = call()
    probe = [(s_h.grad * probe_h).sum().item(), (s_w.grad * probe_w).sum().item()]
    s_h.grad = s_w.grad = None
    reply(
        {
            "ready": True,
            "first_ms": 1000 * seconds,
            "peak_first_mb": mem.peak_mb(),
            "loss": value,
            "probe": probe,
            "device": device,
        }
    )
    mem.start()
    for line in sys.stdin:
        if line.strip() == "run":
            seconds, _ = call()
            s_h.grad = s_w.grad = None
            reply({"ms": 1000 * seconds})
        elif line.strip() == "done":
            reply({"peak_mb": mem.peak_mb()})
            return


def _worker(variant: str, a: argparse.Namespace) -> Worker:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant]
    cmd += ["--tokens", str(a.tokens), "--hidden", str(a.hidden), "--vocab", str(a.vocab)]
    cmd += ["--threads", str(a.threads)]
    return Worker(variant, cmd)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def jsd_agreement() -> dict | None:
    """Generalized JSD (beta 0.5) at a small shape: lmdistill's value against Liger's, relative diff."""
    if liger_unavailable():
        return None
    import torch
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    from lmdistill.chunked import Head, LossSpec, chunked_loss

    torch.manual_seed(0)
    n, h, v = 256, 64, 4096
    s_w, t_w = torch.randn(v, h) * 0.05, torch.randn(v, h) * 0.05
    s_h, t_h, labels = torch.randn(n, h), torch.randn(n, h), torch.randint(0, v, (n,))
    out = {}
    for beta in (0.1, 0.5, 0.9):
        spec = LossSpec(loss="jsd", ce_weight=0.5, kd_weight=0.5, beta=beta, vocab=v, chunk_size=64)
        ours = chunked_loss(s_h, Head(s_w), labels, spec, t_h, Head(t_w)).total.item() / n
        liger = LigerFusedLinearJSDLoss(beta=beta, compiled=False, chunk_size=64)(s_h, s_w, t_h, t_w, labels)
        out[f"jsd_beta_{beta}"] = {
            "lmdistill": ours,
            "liger": liger.item(),
            "rel_diff": _rel(ours, liger.item()),
        }
    return out


def run(a: argparse.Namespace) -> dict:

    why_not = liger_unavailable()
    variants = [v for v in a.variants.split(",") if v]
    skipped = {}
    if why_not:
        skipped = {v: why_not for v in variants if VARIANTS[v][0] == "liger"}
        variants = [v for v in variants if v not in skipped]
    load_before = os.getloadavg()
    workers = [_worker(v, a) for v in variants]  # started (imports, inputs) together
    for w in workers:
        w.read()  # built
    rows = {}
    for w in workers:  # warmed up one after another
        time.sleep(PAUSE_S)
        rows[w.name] = w.send("warmup")
        rows[w.name]["times_ms"] = []
    for _ in range(a.repeats):  # interleaved: A B C A B C
        for w in workers:
            time.sleep(PAUSE_S)
            rows[w.name]["times_ms"].append(w.send("run")["ms"])
    for w in workers:
        rows[w.name].update(w.send("done"))
        w.wait()
    load_after = os.getloadavg()

    naive = rows.get("naive")
    for r in rows.values():
        r["ms"] = statistics.median(r["times_ms"])
        if naive:
            r["loss_rel_diff_vs_naive"] = _rel(r["loss"], naive["loss"])
            r["grad_rel_diff_vs_naive"] = max(
                _rel(x, y) for x, y in zip(r["probe"], naive["probe"], strict=True)
            )
    ratios = {}
    ours = rows.get("lmdistill-256")
    for name, r in rows.items():
        if ours and name != "lmdistill-256":
            ratios[f"{name}_over_lmdistill-256"] = {
                "memory": r["peak_mb"] / max(ours["peak_mb"], 1e-9),
                "time": r["ms"] / ours["ms"],
            }
    return {
        "benchmark": "peers_loss",
        "what": "CE + forward KL (0.5 each, T=1), forward + backward through both heads, float32",
        "shape": {"tokens": a.tokens, "hidden": a.hidden, "vocab": a.vocab},
        "rows": rows,
        "ratios": ratios,
        "skipped": skipped,
        "jsd_agreement": jsd_agreement(),
        "args": {k: v for k, v in vars(a).items() if k != "worker"},
        "command": command_line(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": machine_info(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def report(result: dict) -> None:
    s = result["shape"]
    print(
        f"KD loss fwd+bwd (CE + forward KL), tokens {s['tokens']}, hidden {s['hidden']}, vocab {s['vocab']}, "
        f"fp32, {result['args'].get('threads') or result['machine']['torch_threads']} torch threads per worker"
    )
    columns = [
        ("variant", "<"),
        ("ms (median)", ".1f"),
        ("first ms", ".1f"),
        ("peak MB", ".1f"),
        ("1st peak MB", ".1f"),
        ("loss/token", ".6f"),
        ("loss diff", ".1e"),
        ("grad diff", ".1e"),
    ]
    nan = float("nan")
    rows = [
        (name, r["ms"], r["first_ms"], r["peak_mb"], r["peak_first_mb"], r["loss"],
         r.get("loss_rel_diff_vs_naive", nan), r.get("grad_rel_diff_vs_naive", nan))
        for name, r in result["rows"].items()
    ]  # fmt: skip
    print(table(columns, rows))
    for name, r in result["ratios"].items():
        print(f"{name}: memory {r['memory']:.2f}x, time {r['time']:.2f}x")
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")
    if result["jsd_agreement"]:
        diffs = ", ".join(f"{k} {v['rel_diff']:.1e}" for k, v in result["jsd_agreement"].items())
        print(f"lmdistill vs Liger generalized JSD (256 x 64 x 4096), relative difference: {diffs}")
    print(load_line(result["loadavg_before"], result["loadavg_after"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per variant, after one warm-up")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    ap.add_argument(
        "--variants",
        help=f"comma-separated, of: {', '.join(VARIANTS)} (default all; --quick: all but the compiled one)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="256 tokens, hidden 64, vocab 4096, 2 repeats, eager only"
    )
    ap.add_argument("--json", help=f"write the results here (default {RESULT}; --quick: nowhere)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.tokens, a.hidden, a.vocab, a.threads)
        return
    if a.variants is None:
        a.variants = ",".join(v for v in VARIANTS if not (a.quick and VARIANTS[v][2]))
    unknown = [v for v in a.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if a.quick:
        a.tokens, a.hidden, a.vocab, a.repeats = 256, 64, 4096, 2
    if a.json is None:
        a.json = "" if a.quick else RESULT
    result = run(a)
    report(result)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
