"""Instruction-following distillation: SFT of the student on the teacher's answers to instructions.

Data: the training questions of the tasks (their 0-shot prompts, e.g. "... Answer in one word.") and
any extra instructions (`instruct.instructions`, e.g. self-instruct output), answered by the
teacher; answers are kept when they pass the task's format check (`instruct.keep: format`). Rows are
chats, so the loss falls on the answer only; with `distill.kd_ratio > 0` and a local teacher, logits
KD on the same tokens is added.
Evaluation on held-out instructions: format-check pass rate, ROUGE-L against the teacher's answers,
and win / tie / loss of the trained student against the untrained one (format first, then ROUGE-L).
"""

from __future__ import annotations

from lmdistill.data import read_jsonl
from lmdistill.errors import UserError
from lmdistill.generate.modes import base_sampling, response_verdict
from lmdistill.recipes.common import Probe, TeacherSession, user_message
from lmdistill.teachers.types import Request
from lmdistill.text import rouge_l


def _extra_prompts(path: str) -> list[str]:
    prompts = []
    for i, row in enumerate(read_jsonl(path), start=1):
        text = row.get("prompt") or row.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}:{i}: an instruction row needs a non-empty 'prompt' or 'instruction'")
        if isinstance(row.get("input"), str) and row["input"].strip():
            text += "\n\n" + row["input"]
        prompts.append(text)
    if not prompts:
        raise UserError(f"{path}: no instructions")
    return prompts


def build_rows(cfg, tasks, splits, session: TeacherSession, log=print) -> tuple[list[dict], list[dict]]:
    items = [(task, ex, task.prompt(ex)) for task in tasks for ex in splits[task.name]["train"]]
    if cfg.instruct.instructions:
        items += [(None, None, p) for p in _extra_prompts(cfg.instruct.instructions)]
    sampling = base_sampling(cfg)  # the recipe's `sampling` section, as `lmdistill generate` reads it
    requests = [Request.chat(list(user_message(p)), sampling) for _, _, p in items]
    responses = session.ask(requests, "teacher answers instructions")
    rows, rejected = [], []
    for (task, ex, prompt), req, resp in zip(items, requests, responses, strict=True):
        verdict = response_verdict(resp, keep_cut=False)
        if (
            verdict == "kept"
            and cfg.instruct.keep == "format"
            and task is not None
            and not task.check(resp.text, ex)
        ):
            verdict = "format_failed"
        row = {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": resp.text.strip()},
            ],
            "task": task.name if task is not None else "instructions",
            "filter": verdict,
            "request_hash": session.teacher.key(req),
        }
        session.file(row, verdict, rows, rejected)
    session.stats.kept = len(rows)
    return rows, rejected


def probes(cfg, tasks, splits) -> list[Probe]:
    return [
        Probe("0-shot", task, ex, user_message(task.prompt(ex)), cfg.eval.max_new_tokens)
        for task in tasks
        for ex in splits[task.name]["heldout"]
    ]


def compare(probes_: list[Probe], teacher: list[str], before: list[str], after: list[str]) -> dict:
    """Per task: ROUGE-L of before/after against the teacher's answers; ROUGE-L of the teacher, before and
    after against the task's reference answer (`rouge_ref_*`: the teacher is scored too, so a student's
    share of the teacher's figure can be read); after-vs-before win/tie/loss (format first, then ROUGE-L
    against the teacher)."""
    out: dict[str, dict] = {}
    keys = ("rouge_before", "rouge_after", "rouge_ref_teacher", "rouge_ref_before", "rouge_ref_after")
    for p, t, b, a in zip(probes_, teacher, before, after, strict=True):
        row = out.setdefault(p.task.name, dict.fromkeys(keys, 0.0) | {"win": 0, "tie": 0, "loss": 0, "n": 0})
        rb, ra = rouge_l(b, t), rouge_l(a, t)
        ref = str(p.example.answer)
        row["rouge_before"] += rb
        row["rouge_after"] += ra
        row["rouge_ref_teacher"] += rouge_l(t, ref)
        row["rouge_ref_before"] += rouge_l(b, ref)
        row["rouge_ref_after"] += rouge_l(a, ref)
        row["n"] += 1
        key_b, key_a = (p.task.check(b, p.example), rb), (p.task.check(a, p.example), ra)
        row["win" if key_a > key_b else "loss" if key_a < key_b else "tie"] += 1
    for row in out.values():
        for key in keys:
            row[key] /= row["n"]
    return out
