"""Logits KD alone against logits KD + hints, equal steps, same narrow student, same data.

Runs `configs/hints_kd.yaml` twice (the second time with every hint weight at 0) and prints the
held-out top-1 agreement with the teacher, KL to it and perplexity of both students.

    python benchmarks/compare_hints.py [--steps 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lmdistill.config import load_config
from lmdistill.training.run import run

ROOT = Path(__file__).parent.parent
OFF = ["hints.hidden_weight=0", "hints.relation_weight=0", "hints.attention_weight=0"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="runs/compare_hints")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    results = {}
    for name, extra in (("logits KD", OFF), ("logits KD + hints", [])):
        out = Path(a.out) / name.replace(" ", "_").replace("+", "plus")
        overrides = [
            f"train.max_steps={a.steps}",
            f"train.output_dir={out}",
            "train.save_steps=100000",
            *extra,
        ]
        t0 = time.time()
        run(load_config(ROOT / "configs" / "hints_kd.yaml", overrides))
        results[name] = {
            **json.loads((out / "eval.json").read_text()),
            "train_seconds": round(time.time() - t0),
        }
    print(f"\n{a.steps} steps each, student 10 layers x 384 wide, held-out teacher answers")
    print("| run | top-1 agreement | KL(teacher ‖ student) | perplexity | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['top1']:.1%} | {r['kl']:.3f} | {r['perplexity']:.2f} | {r['train_seconds']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
