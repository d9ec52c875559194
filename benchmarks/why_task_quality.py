"""Why on-policy loses in bench_task_quality: what the students' own answers look like, and how the
teacher scores them. Reads a results file of bench_task_quality.py (its saved held-out answers); no
training.

Per run, from its greedy held-out answers:
- own_logprob: the teacher's mean log-prob per token (nats) of the answers, after the same chat prompt
  (`lmdistill.eval.own_answers`): what on-policy distillation rewards. A method that raises it while
  its accuracy falls is optimising the teacher's likelihood, not the task;
- answer_tokens: mean answer length in the teacher's tokens; cut: the share of answers that reached the
  generation limit (the results' max_new_tokens) without ending; repeats: the share repeating a 4-word run;
- on arithmetic: "states_equation", the share of answers that write an equation with the question's two
  numbers ("4 + 5 = 9", right or wrong), and "right_given_equation", the accuracy among those.
Per method: mean and sample sd over seeds. Samples: every method's seed-0 answers to the first
--samples held-out arithmetic questions, with the gold answer.

    python benchmarks/why_task_quality.py benchmarks/results/task_quality.json

Writes benchmarks/results/task_quality_why.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import bench_quality  # noqa: E402
import bench_task_quality as btq  # noqa: E402
import torch  # noqa: E402

from lmdistill.eval.own_answers import teacher_logprob_of_answers  # noqa: E402
from lmdistill.eval.run import chat_prompts  # noqa: E402
from lmdistill.io import atomic_write_json  # noqa: E402
from lmdistill.models import load_teacher, load_tokenizer  # noqa: E402

FIGURES = ("own_logprob", "answer_tokens", "cut", "repeats", "states_equation", "right_given_equation")
_EQUATION = re.compile(r"(\d+)\s*([+\-])\s*(\d+)\s*=\s*(\d+)")


def equation_figures(items: list[tuple], answers: list[str]) -> dict[str, float | None]:
    """On the arithmetic questions: the share of answers writing an equation of the question's two
    numbers, and the accuracy (the task's checker) among those answers (None when there are none)."""
    stated, right = 0, 0
    arithmetic = [
        (t, ex, ans) for (t, ex), ans in zip(items, answers, strict=True) if t.name.startswith("arith")
    ]
    for task, example, answer in arithmetic:
        numbers = set(re.findall(r"\d+", task.prompt(example)))
        if any({m[0], m[2]} <= numbers for m in _EQUATION.findall(answer)):
            stated += 1
            right += btq.grade(task, answer, example)
    return {
        "states_equation": stated / len(arithmetic),
        "right_given_equation": right / stated if stated else None,
    }


def run_figures(teacher, tokenizer, items, prompts, rendered, answers, max_new_tokens: int) -> dict:
    own = teacher_logprob_of_answers(teacher, tokenizer, rendered, answers, batch_size=16)
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    return {
        "own_logprob": own.logprob_per_token,
        "answer_tokens": sum(lengths) / len(lengths),
        # generation stops at EOS (not part of the text) or at the limit: at the limit, it was cut
        "cut": sum(n >= max_new_tokens for n in lengths) / len(lengths),
        "repeats": btq.answer_stats(items, answers)["repeats"],
        **equation_figures(items, answers),
    }


def spread(values: list[float | None]) -> dict:
    xs = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "n": len(xs),
    }


def markdown(why: dict) -> str:
    head = "| method | held-out arithmetic:1 | teacher log-prob / token of own answers | answer tokens | cut at the limit | repeating | states an equation | right given an equation |"
    lines = [head, "|---|" + "---:|" * 7]
    pct = {"cut", "repeats", "states_equation", "right_given_equation", "acc"}
    for name, row in why["methods"].items():
        cells = []
        for key in ("acc", *FIGURES):
            x = row[key]
            if x["mean"] is None:
                cells.append("n/a")
            elif key in pct:
                cells.append(f"{100 * x['mean']:.1f}% ± {100 * x['sd']:.1f}")
            else:
                cells.append(f"{x['mean']:.3f} ± {x['sd']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a results file of bench_task_quality.py")
    ap.add_argument(
        "--samples", type=int, default=4, help="arithmetic questions shown with every method's answer"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(HERE / "results" / "task_quality_why.json"))
    a = ap.parse_args(argv)
    started = time.time()
    torch.set_num_threads(a.threads)
    results = json.loads(Path(a.results).read_text())
    s = results["settings"]
    items = btq.heldout_items(argparse.Namespace(heldout_per_task=s["heldout_per_task"]))
    prompts = [t.prompt(e) for t, e in items]
    tokenizer, teacher = load_tokenizer(s["teacher"]), load_teacher(s["teacher"]).eval()
    rendered = chat_prompts(tokenizer, prompts)

    def figures(answers: list[str]) -> dict:
        return run_figures(teacher, tokenizer, items, prompts, rendered, answers, s["max_new_tokens"])

    refs = {
        "teacher": figures(results["setup"]["teacher_heldout_answers"]),
        "warm student": figures(results["setup"]["warm_student_answers"]),
    }
    runs = []
    for run in results["runs"]:
        runs.append({"method": run["method"], "seed": run["seed"], **figures(run["answers"])})
        runs[-1]["acc"] = run["acc:arithmetic:1"]
    methods = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        methods[name] = {key: spread([r[key] for r in mine]) for key in ("acc", *FIGURES)}
    arithmetic = [i for i, (t, _) in enumerate(items) if t.name.startswith("arith")][: a.samples]
    samples = []
    for i in arithmetic:
        _, example = items[i]
        by_method = {r["method"]: r["answers"][i] for r in results["runs"] if r["seed"] == min(s["seeds"])}
        samples.append(
            {
                "question": prompts[i],
                "gold": example.answer,
                "teacher": results["setup"]["teacher_heldout_answers"][i],
                "answers": by_method,
            }
        )
    why = {
        "benchmark": "why on-policy loses (why_task_quality.py)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/why_task_quality.py", *(argv or sys.argv[1:])]),
        "machine": bench_quality.machine(),
        "source": {"file": a.results, "date": results["date"], "command": results["command"]},
        "references": refs,
        "runs": runs,
        "methods": methods,
        "samples": samples,
        "wall_seconds": round(time.time() - started, 1),
    }
    why["table"] = markdown(why)
    atomic_write_json(a.json, why)
    print(why["table"])
    for ref, row in refs.items():
        print(ref, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    print(f"wall {why['wall_seconds']} s; results {a.json}")
    return why


if __name__ == "__main__":
    main()
