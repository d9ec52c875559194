"""Dynamic int8 against float32 on the embedded teacher: forward speed, size, next-token agreement.

`lmdistill export --quantize int8-dynamic` prints the same report for the folder it writes; this
script measures the 30-layer teacher itself, with every Linear quantised and with the MLP
down-projections left in float (whose inputs, after the gated activation, have the widest range).

    python benchmarks/bench_int8.py [--threads 1 2] [--repeats 5]

Writes benchmarks/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from lmdistill.eval.measure import machine_info
from lmdistill.export import format_quantization_report, quantization_report
from lmdistill.models import ensure_embedded

ROOT = Path(__file__).parent.parent
TEXT = ROOT / "data" / "examples" / "heldout.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "int8.json"))
    a = ap.parse_args()
    folder = ensure_embedded("smollm2-135m")
    texts = [p.strip() for p in TEXT.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    rows = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        for keep in ((), ("down_proj",)):
            r = quantization_report(folder, texts, repeats=a.repeats, keep_float=keep)
            print(
                ("all Linear" if not keep else f"all but {', '.join(keep)}")
                + ": "
                + format_quantization_report(r)
            )
            rows.append(r)
    result = {
        "command": "python benchmarks/bench_int8.py " + " ".join(os.sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": "smollm2-135m",
        "text": str(TEXT.relative_to(ROOT)),
        "load_average_at_end": os.getloadavg(),
        "machine": machine_info(),
        "rows": rows,
    }
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
