"""How well the embedded teacher (SmolLM2-135M-Instruct) does on the built-in tasks.

Greedy decoding through its chat template, held-out questions, 0-shot (`task.prompt`) and k-shot
(`icl_prompt` with gold demonstrations drawn at random from the train split) in two demonstration
templates: "qa" (the default "Q: {question}\nA: {answer}") and "cot" (the gold rationale before the
answer). Scores are `Task.check` (accuracy; for format tasks the format pass rate) and, for the
format tasks, how often the content is also the gold content (`Task.grade(...)["correct"]`).

    python benchmarks/teacher_on_tasks.py                       # the table in docs/tasks.md
    python benchmarks/teacher_on_tasks.py --runs arithmetic:1/0 arithmetic:1/4/cot --n 16 --show 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

TEMPLATES = {
    "qa": "Q: {question}\nA: {answer}",  # lmdistill.tasks.DEFAULT_TEMPLATE
    "cot": "Question: {question}\nSolution: {rationale}\nAnswer: {answer}",
}
# TASK/K[/TEMPLATE]
DEFAULT_RUNS = [
    *(f"arithmetic:{lv}/{run}" for lv in (1, 2, 3, 4) for run in ("0", "4/qa", "4/cot")),
    "sentiment/0",
    "sentiment/4/qa",
    "format_one_word/0",
    "format_one_word/4/qa",
    "format_json/0",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="TASK/K[/TEMPLATE], K=0: 0-shot")
    ap.add_argument("--n", type=int, default=30, help="held-out questions per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--select", default="random", choices=["random", "nearest"])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--show", type=int, default=0, help="print this many outputs per run")
    ap.add_argument("--json", default="benchmarks/results/teacher_on_tasks.json")
    a = ap.parse_args()

    import torch
    import transformers

    from lmdistill.models import load_teacher, load_tokenizer
    from lmdistill.tasks import get_task, icl_prompt, select_demos
    from lmdistill.teachers.local import LocalTeacher
    from lmdistill.teachers.types import Request, Sampling

    teacher = LocalTeacher(
        load_teacher("smollm2-135m"), load_tokenizer("smollm2-135m"), name="smollm2-135m", batch_size=a.batch
    )
    rows = []
    t_all = time.perf_counter()
    for run in a.runs:
        name, k_text, template = [*run.split("/"), "qa"][:3]
        k = int(k_text)
        task = get_task(name)
        heldout = task.examples("heldout", a.n, seed=a.seed)
        train = task.examples("train", 200 if task.pool is None else None, seed=a.seed)
        prompts = [
            icl_prompt(task, select_demos(train, q, k, method=a.select, seed=a.seed), q, TEMPLATES[template])
            for q in heldout
        ]
        # k-shot: stop where the model starts a next demonstration of its own
        stop = ("\n\n" + TEMPLATES[template].split("{")[0].strip(),) if k else ()
        sampling = Sampling(max_new_tokens=a.max_new_tokens, stop=stop)  # temperature 0: greedy
        t0 = time.perf_counter()
        outs = teacher.generate([Request.chat([{"role": "user", "content": p}], sampling) for p in prompts])
        seconds = time.perf_counter() - t0
        grades = [task.grade(o.text, q) for o, q in zip(outs, heldout, strict=True)]
        content = [g["correct"] for g in grades if g["correct"] is not None]
        row = {
            "task": name,
            "shots": k,
            "template": template if k else None,
            "n": len(heldout),
            "score": sum(g["passed"] for g in grades) / len(grades),
            "content_correct": sum(content) / len(content) if content else None,
            "cut_at_length": sum(o.finish_reason == "length" for o in outs),
            "seconds": round(seconds, 1),
            "samples": [
                {"prompt": p, "output": o.text, "gold": q.answer, "passed": g["passed"]}
                for p, o, q, g in list(zip(prompts, outs, heldout, grades, strict=True))[:3]
            ],
        }
        rows.append(row)
        extra = f"  content {row['content_correct']:.2f}" if row["content_correct"] is not None else ""
        print(f"{run:<22} score {row['score']:.2f}{extra}  ({seconds:.0f}s)", flush=True)
        for o, q, g in list(zip(outs, heldout, grades, strict=True))[: a.show]:
            print(f"   {'OK ' if g['passed'] else 'BAD'} gold={q.answer!r} out={o.text[:120]!r}")
    total = time.perf_counter() - t_all
    result = {
        "rows": rows,
        "args": vars(a),
        "seconds": round(total, 1),
        "date": dt.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"total {total:.0f}s")


if __name__ == "__main__":
    main()
