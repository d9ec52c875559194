"""Which teacher layers to copy into a shrunk student: each choice scored before any training.

The embedded teacher (SmolLM2-135M-Instruct, 30 layers) shrunk to 10 layers in several ways; each
copy's perplexity and KL(teacher ‖ student) on the first 256 tokens of data/examples/heldout.txt.
A copy closer to the teacher at step 0 has less to repair (configs/recipes/how_far.yaml uses the
best one here).

    python benchmarks/student_layers.py   # about a minute; writes benchmarks/results/student_layers.json
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from lmdistill.io import atomic_write_json
from lmdistill.models import load_teacher, load_tokenizer, shrink_model

ROOT = Path(__file__).resolve().parent.parent
CHOICES = {
    "evenly spaced (the demo's student)": None,
    "first 8 + last 2": [*range(8), 28, 29],
    "first 6 + last 4": [*range(6), 26, 27, 28, 29],
    "first 5 + last 5": [*range(5), *range(25, 30)],
    "first 4, evenly spaced, last": [0, 1, 2, 3, 8, 13, 18, 23, 27, 29],
    "first 3, every 4th, last 2": [0, 1, 2, 6, 10, 14, 18, 22, 28, 29],
}


def main() -> dict:
    torch.set_num_threads(1)
    tok, teacher = load_tokenizer("smollm2-135m"), load_teacher("smollm2-135m")
    ids = tok((ROOT / "data" / "examples" / "heldout.txt").read_text(), return_tensors="pt").input_ids[
        :, :256
    ]
    rows = []
    with torch.no_grad():
        t_logp = teacher(ids).logits.float().log_softmax(-1)
        t_ce = torch.nn.functional.nll_loss(t_logp[0, :-1], ids[0, 1:]).item()
        for name, layers in CHOICES.items():
            student = (
                shrink_model(teacher, num_layers=10)
                if layers is None
                else shrink_model(teacher, layers=layers)
            )
            s_logp = student(ids).logits.float().log_softmax(-1)
            ce = torch.nn.functional.nll_loss(s_logp[0, :-1], ids[0, 1:]).item()
            kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean().item()
            row = {
                "choice": name,
                "layers": student.config.lmdistill_teacher_layers,
                "perplexity": math.exp(ce),
                "kl": kl,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    import transformers

    results = {
        "benchmark": "student layer choice before training",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "tokens": int(ids.shape[1]),
        "teacher_perplexity": math.exp(t_ce),
        "rows": rows,
    }
    atomic_write_json(ROOT / "benchmarks" / "results" / "student_layers.json", results)
    return results


if __name__ == "__main__":
    main()
