"""report.md of a recipe run: what the teacher's data cost and kept, and each model's task scores."""

from __future__ import annotations

import platform

_WHAT = {
    "icl": "in-context learning distillation (in-context tuning on teacher-labelled k-shot layouts)",
    "cot": "chain-of-thought distillation",
    "instruct": "instruction-following distillation (SFT on the teacher's answers)",
}


def _pct(row: dict | None) -> str:
    return "–" if row is None else f"{row['accuracy']:.0%} ({row['correct']}/{row['n']})"


def _counts(t) -> str:
    text = f"{t.train_per_task} training and {t.heldout_per_task} held-out questions each"
    named = [
        f"{n} {t.train_counts.get(n, t.train_per_task)}/{t.heldout_counts.get(n, t.heldout_per_task)}"
        for n in t.names
        if n in t.train_counts or n in t.heldout_counts
    ]
    return text + (f"; training/held-out: {', '.join(named)}" if named else "")


def score_table(results: dict) -> str:
    models = list(results["scores"])
    keys = sorted({k for table in results["scores"].values() for k in table})
    lines = ["| setting / task | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_pct(results["scores"][m].get(key)) for m in models) + " |")
    return "\n".join(lines)


def render(cfg, results: dict, *, brief: bool = False) -> str:
    d = results["data"]
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(d["dropped"].items(), key=lambda kv: -kv[1])) or "none"
    if brief:
        return score_table(results)
    parts = [
        f"# lmdistill recipe: {cfg.method}",
        "",
        f"{_WHAT[cfg.method]}; teacher `{cfg.teacher.backend}:{cfg.teacher.name}`; tasks: "
        + ", ".join(f"`{t}`" for t in results["tasks"])
        + f" ({_counts(cfg.tasks)}, seed {cfg.tasks.seed}).",
        "",
        "## Teacher data",
        "",
        f"- rows kept: {d['kept']}; dropped: {dropped}",
        "- training sets: " + ", ".join(f"{k} {v} rows" for k, v in d["rows"].items()),
        f"- teacher requests sent: {d['requests_sent']}, answered from the cache: {d['requests_cached']}",
        f"- tokens (requests sent and cached): prompt {d['prompt_tokens']}, completion {d['completion_tokens']}",
        "",
        "## Task scores on held-out questions",
        "",
        "Each cell: share of held-out questions answered correctly (for format tasks: passing the format check), "
        "greedy decoding. A dash: that model was not asked that way.",
        "",
        score_table(results),
        "",
    ]
    if "versus_teacher" in results:
        parts += [
            "## Against the teacher's answers and the untrained student",
            "",
            "ROUGE-L of each model's answers against the teacher's (before / after training), and against the "
            "task's reference answer (teacher / before / after).",
            "",
            "| task | ROUGE-L vs teacher, before | after | ROUGE-L vs reference, teacher | before | after "
            "| after vs before: win / tie / loss |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for task, r in results["versus_teacher"].items():
            parts.append(
                f"| {task} | {r['rouge_before']:.3f} | {r['rouge_after']:.3f} | {r['rouge_ref_teacher']:.3f} | "
                f"{r['rouge_ref_before']:.3f} | {r['rouge_ref_after']:.3f} | {r['win']} / {r['tie']} / {r['loss']} |"
            )
        parts.append("")
    parts += [
        "## Run",
        "",
        "- students: " + ", ".join(f"{k}: `{v}`" for k, v in results["students"].items()),
        f"- student: {cfg.student.name or f'the teacher shrunk to {cfg.student.layers or cfg.student.num_layers} layers'}; "
        f"{cfg.train.max_steps} steps, batch {cfg.train.per_device_train_batch_size} x "
        f"{cfg.train.gradient_accumulation_steps}, lr {cfg.train.learning_rate}, kd_ratio {cfg.distill.kd_ratio}",
        f"- {results['seconds']:.0f} s in all; Python {platform.python_version()} on {platform.machine()}",
        f"- command: `{results['command']}`",
        "- per-question answers of every model: predictions.jsonl; training data: data/; dropped rows with "
        "reasons: data/rejected.jsonl",
        "",
    ]
    return "\n".join(parts)
