"""Chain-of-thought distillation: the student learns the teacher's rationales, or (distilling
step-by-step, Hsieh et al. 2023) rationale and label as two tasks told apart by a prompt prefix.

Data: `cot.samples` rationales per training question from the teacher (`lmdistill generate`'s cot
mode: "Reasoning: ... Answer: ..."), kept by `cot.keep` (the answer matches gold, or the majority).
- variant rationale: prompt = the CoT prompt, target = "Reasoning: r\\nAnswer: y";
- variant step_by_step: "[label] x" -> "Answer: y" with weight alpha and "[rationale] x" -> "Reasoning:
  r" with weight 1 - alpha, so loss = alpha * label + (1 - alpha) * rationale (token sums);
- label only (with `cot.compare_label_only`): the same kept questions, prompt = the plain 0-shot
  prompt, target = "Answer: y" (the teacher's answer): equal data without the rationale.
Evaluation: extracted-answer accuracy on held-out questions, each model asked the way it was trained
(teacher and the untrained student in every way).
"""

from __future__ import annotations

from lmdistill.generate.config import CoTConfig, GenerateConfig
from lmdistill.generate.modes import cot as generate_cot
from lmdistill.recipes.common import Probe, TeacherSession, user_message

TEMPLATE = CoTConfig().template


def generate_config(cfg, task) -> GenerateConfig:
    return GenerateConfig(
        mode="cot",
        input="recipe",
        output="recipe",
        sampling=cfg.sampling,
        cot=CoTConfig(samples=cfg.cot.samples, keep=cfg.cot.keep, numeric=bool(task.numeric)),
    )


def build_rows(cfg, tasks, splits, session: TeacherSession, log=print) -> tuple[dict, list[dict]]:
    """{"cot": rows, "label_only": rows} (label_only when compared) and the rejected rationales."""
    kept_all, rejected = [], []
    for task in tasks:
        train = splits[task.name]["train"]
        rows = [{"question": ex.question, "answer": ex.answer} for ex in train]
        by_question = {ex.question: ex for ex in train}
        kept, dropped = generate_cot(
            generate_config(cfg, task), rows, session.ask, session.teacher, f"{task.name} (train)"
        )
        for r in kept:
            r["task"] = task.name
            r["example"] = by_question[r["question"]]
        kept_all += kept
        for r in dropped:
            session.stats.dropped[r["provenance"]["filter"]] += 1
            rejected.append({k: v for k, v in r.items() if k != "example"} | {"task": task.name})
    session.stats.kept = len(kept_all)
    task_of = {t.name: t for t in tasks}
    variant, label_only = [], []
    for r in kept_all:
        task, answer, rationale = task_of[r["task"]], r["teacher_answer"], r["rationale"]
        base = {"task": r["task"], "question": r["question"], "gold": r["answer"]}
        if cfg.cot.variant == "rationale":
            variant.append({**base, "messages": r["messages"]})
        else:
            q = r["example"].question
            variant.append(
                {
                    **base,
                    "weight": cfg.cot.alpha,
                    "messages": _pair(cfg.cot.label_prefix + q, f"Answer: {answer}"),
                }
            )
            variant.append(
                {
                    **base,
                    "weight": 1.0 - cfg.cot.alpha,
                    "messages": _pair(cfg.cot.rationale_prefix + q, f"Reasoning: {rationale}"),
                }
            )
        label_only.append({**base, "messages": _pair(task.prompt(r["example"]), f"Answer: {answer}")})
    out = {cfg.cot.variant: variant}
    if cfg.cot.compare_label_only:
        out["label_only"] = label_only
    for rows in out.values():
        for row in rows:
            row.pop("example", None)
    return out, rejected


def _pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def probes(cfg, tasks, splits) -> list[Probe]:
    """Held-out questions asked three ways: with the CoT prompt, plainly (0-shot), and with the label prefix."""
    out = []
    for task in tasks:
        for ex in splits[task.name]["heldout"]:
            out.append(
                Probe(
                    "cot",
                    task,
                    ex,
                    user_message(TEMPLATE.replace("{question}", ex.question)),
                    cfg.eval.cot_max_new_tokens,
                )
            )
            out.append(Probe("direct", task, ex, user_message(task.prompt(ex)), cfg.eval.max_new_tokens))
            if cfg.cot.variant == "step_by_step":
                out.append(
                    Probe(
                        "label",
                        task,
                        ex,
                        user_message(cfg.cot.label_prefix + ex.question),
                        cfg.eval.max_new_tokens,
                    )
                )
    return out


# The settings each trained student is asked in (the way it was trained).
STUDENT_SETTINGS = {"rationale": ("cot",), "step_by_step": ("label",), "label_only": ("direct",)}
