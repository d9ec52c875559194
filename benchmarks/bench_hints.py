"""Step time and peak memory: logits KD alone against logits KD + hint terms, on the real teacher (CPU).

Teacher SmolLM2-135M-Instruct (30 layers, width 576); student: 10 of its layers narrowed to width
384 (so hidden hints need learned projections). One training step = DistillTrainer.compute_loss +
backward + AdamW step on a fixed batch. Each case runs in its own process; time is the median of
the timed steps, peak memory the growth of the process's max RSS over the case.

    python benchmarks/bench_hints.py [--batch 4 --seq 128 --steps 6]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

CASES = {
    "logits": {},
    "logits+hidden": {"hidden_weight": 1.0, "layers": "copied", "metric": "ln_mse"},
    "logits+hidden+relations": {
        "hidden_weight": 1.0,
        "layers": "copied",
        "metric": "ln_mse",
        "relation_weight": 1.0,
        "relation_layers": "last",
    },
}


def _case(name: str, batch: int, seq: int, steps: int) -> dict:
    import torch
    from transformers import TrainingArguments

    from lmdistill.chunked import LossSpec
    from lmdistill.config import HintConfig
    from lmdistill.models import load_teacher, shrink_model
    from lmdistill.training.hint_terms import HintTerms
    from lmdistill.training.trainer import DistillTrainer

    torch.manual_seed(0)
    teacher = load_teacher("smollm2-135m")
    student = shrink_model(teacher, num_layers=10, hidden_size=384, num_key_value_heads=2).train()
    cfg = HintConfig(**CASES[name])
    hints = HintTerms(cfg, student, teacher, log=lambda *_: None) if cfg.enabled else None
    args = TrainingArguments(output_dir="/tmp/bench_hints", use_cpu=True, report_to="none", max_steps=steps)
    trainer = DistillTrainer(
        model=student, teacher=teacher, hints=hints, spec=LossSpec(vocab=49152, chunk_size=256), args=args
    )
    params = list(student.parameters()) + (hints.parameters() if hints else [])
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, 49152, (batch, seq))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = trainer.compute_loss(student, inputs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    timed = times[2:] if len(times) > 3 else times
    return {"case": name, "step_s": statistics.median(timed), "peak_mb": peak_mb, "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.case:
        print(json.dumps(_case(a.case, a.batch, a.seq, a.steps)))
        return
    rows = []
    for name in CASES:
        cmd = [sys.executable, __file__, "--case", name, "--batch", str(a.batch), "--seq", str(a.seq)]
        out = subprocess.run([*cmd, "--steps", str(a.steps)], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(
        f"one KD step, batch {a.batch} x {a.seq} tokens, teacher SmolLM2-135M, student 10 layers x 384 wide"
    )
    print(f"{'case':<26}{'step s':>9}{'vs logits':>11}{'peak MB':>10}{'vs logits':>11}")
    for r in rows:
        r["time_ratio"] = r["step_s"] / base["step_s"]
        r["memory_ratio"] = r["peak_mb"] / base["peak_mb"]
        print(
            f"{r['case']:<26}{r['step_s']:>9.2f}{r['time_ratio']:>10.2f}x{r['peak_mb']:>10.0f}{r['memory_ratio']:>10.2f}x"
        )
    if a.json:
        import torch
        import transformers

        meta = {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "args": vars(a), "machine": meta}, fh, indent=2)


if __name__ == "__main__":
    main()
