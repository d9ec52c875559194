"""Batched local generation against one request at a time, on the embedded SmolLM2 teacher (CPU).

Greedy, the same 32 chatterbot-corpus prompts both ways, no cache. Prints generated tokens/s and
the ratio, and checks that both ways produce the same answers.

    python benchmarks/bench_local_generation.py [--prompts 32 --max-new-tokens 32 --batch 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    import torch

    from lmdistill.data import chatterbot_conversations
    from lmdistill.models import load_teacher, load_tokenizer
    from lmdistill.teachers.local import LocalTeacher
    from lmdistill.teachers.types import Request, Sampling

    tok, model = load_tokenizer("smollm2-135m"), load_teacher("smollm2-135m")
    prompts = list(dict.fromkeys(c["prompt"] for c in chatterbot_conversations()))[: a.prompts]
    requests = [
        Request.chat([{"role": "user", "content": p}], Sampling(max_new_tokens=a.max_new_tokens))
        for p in prompts
    ]
    rows = {}
    for name, batch in (("one at a time", 1), (f"batched ({a.batch})", a.batch)):
        teacher = LocalTeacher(model, tok, name="smollm2-135m", batch_size=batch)
        t0 = time.perf_counter()
        out = teacher.generate(requests)
        seconds = time.perf_counter() - t0
        tokens = sum(r.completion_tokens for r in out)
        rows[name] = {
            "seconds": seconds,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "texts": [r.text for r in out],
        }
    single, batched = rows.values()
    same = sum(x == y for x, y in zip(single["texts"], batched["texts"], strict=True))
    print(
        f"greedy generation, {len(prompts)} prompts, up to {a.max_new_tokens} new tokens, SmolLM2-135M on CPU"
    )
    print(f"{'mode':<16}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}")
    for name, r in rows.items():
        print(f"{name:<16}{r['seconds']:>9.1f}{r['tokens']:>8}{r['tokens_per_s']:>10.1f}")
    print(
        f"batched / one at a time: {batched['tokens_per_s'] / single['tokens_per_s']:.2f}x; identical answers: {same}/{len(prompts)}"
    )
    if a.json:
        meta = {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        for r in rows.values():
            r.pop("texts")
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "identical": same, "args": vars(a), "machine": meta}, fh, indent=2)


if __name__ == "__main__":
    main()
