"""On-policy sampling throughput: one batched `generate` call per optimizer window against one prompt at a time.

Student: SmolLM2-135M-Instruct shrunk to 10 layers (as configs/logits_kd.yaml), float32, CPU.
Prompts: the first --prompts training prompts of data/smollm2_chatterbot (chat template, generation
prompt), sampled at temperature 1 with `lmdistill.training.on_policy.sample_completions` (KV cache,
left padding). tokens/s counts the completions' real tokens (up to and including the first EOS);
padding a finished row carries in the batched call is its cost, not a token. Each mode is timed
--repeats times after one warm-up call; the median is reported.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_on_policy_sampling.py [--prompts 16 --max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "on_policy_sampling.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()

    import torch
    import transformers

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from lmdistill.data import load_records, pad_id
    from lmdistill.io import atomic_write_json
    from lmdistill.models import load_teacher, load_tokenizer, shrink_model
    from lmdistill.training.sampling import eos_ids, prompt_features, sample_completions

    tok = load_tokenizer("smollm2-135m")
    student = shrink_model(load_teacher("smollm2-135m"), num_layers=10).float()
    rows = load_records(ROOT / "data/smollm2_chatterbot/train.jsonl")[: a.prompts]
    prompts = [f["prompt_ids"] for f in prompt_features(rows, tok, 256, a.max_new_tokens)]
    kw = dict(pad_id=pad_id(tok), eos=eos_ids(tok, student), max_new_tokens=a.max_new_tokens)

    def batched(seed):
        return sample_completions(student, prompts, seed=seed, **kw)

    def one_at_a_time(seed):
        return [sample_completions(student, [q], seed=seed + i, **kw)[0] for i, q in enumerate(prompts)]

    modes = {}
    for name, fn in (("batched", batched), ("one_at_a_time", one_at_a_time)):
        fn(100)  # warm-up
        runs = []
        for r in range(a.repeats):
            start = time.perf_counter()
            out = fn(r)
            wall = time.perf_counter() - start
            tokens = sum(len(c) for c in out)
            runs.append({"wall_s": round(wall, 3), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1)})
        modes[name] = {
            "runs": runs,
            "tokens_per_s_median": statistics.median(x["tokens_per_s"] for x in runs),
        }
        print(name, modes[name], flush=True)
    result = {
        "what": __doc__.splitlines()[0],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "settings": vars(a),
        "modes": modes,
        "speedup": round(
            modes["batched"]["tokens_per_s_median"] / modes["one_at_a_time"]["tokens_per_s_median"], 2
        ),
    }
    atomic_write_json(Path(a.out), result)
    print("speedup", result["speedup"])


if __name__ == "__main__":
    main()
