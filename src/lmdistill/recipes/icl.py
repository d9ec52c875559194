"""In-context learning distillation (in-context tuning): the student learns to answer a query after k
teacher-labelled demonstrations.

Data: per task, `icl.demo_pool` training questions are labelled by the teacher (0-shot); the rest are
queries, each laid out once per k in `icl.k` as instruction I, k demonstrations f(x_i, y_i) chosen
from the labelled pool, then f(x_{k+1}, .). The teacher answers each layout; its answer (as the
task's checker reads it) is the training target, so the loss falls on the answer tokens only.
Evaluation: held-out questions 0-shot and `icl.eval_k`-shot (gold demonstrations from the training
split), for the teacher, the student before training and after.
"""

from __future__ import annotations

import dataclasses

from lmdistill.errors import UserError
from lmdistill.generate.modes import base_sampling, response_verdict
from lmdistill.recipes.common import Probe, TeacherSession, user_message
from lmdistill.teachers.types import Request


def label_demos(cfg, task, pool, session: TeacherSession, rejected: list[dict]) -> list:
    """The pool with the teacher's 0-shot answers as labels; unreadable answers are dropped."""
    from lmdistill.tasks import icl_prompt

    prompts = [icl_prompt(task, [], ex, template=cfg.icl.template) for ex in pool]
    responses = session.ask(
        [Request.chat(list(user_message(p)), base_sampling(cfg)) for p in prompts],
        f"{task.name}: teacher labels demos",
    )
    labelled = []
    for ex, resp in zip(pool, responses, strict=True):
        label = task.extract(resp.text, ex) if resp.finish_reason != "error" else None
        if label is None:
            session.stats.dropped["demo_no_answer"] += 1
            rejected.append(
                {"task": task.name, "stage": "demonstration", "question": ex.question, "raw": resp.text}
            )
        else:
            labelled.append(dataclasses.replace(ex, answer=label))
    return labelled


def build_rows(cfg, tasks, splits, session: TeacherSession, log=print) -> tuple[list[dict], list[dict]]:
    """Training rows (messages, k-shot prompt -> teacher's answer) and the rejected ones with reasons."""
    from lmdistill.tasks import icl_prompt, select_demos

    rows, rejected = [], []
    for task in tasks:
        train = splits[task.name]["train"]
        pool, queries = train[: cfg.icl.demo_pool], train[cfg.icl.demo_pool :]
        demos_pool = label_demos(cfg, task, pool, session, rejected)
        if max(cfg.icl.k) > len(demos_pool):
            raise UserError(
                f"{task.name}: icl.k asks for up to {max(cfg.icl.k)} demonstrations but the teacher labelled only "
                f"{len(demos_pool)} of the {len(pool)} in the pool; raise icl.demo_pool or lower icl.k"
            )
        layouts = []
        for qi, query in enumerate(queries):
            for k in cfg.icl.k:
                demos = select_demos(
                    demos_pool, query, k, method=cfg.icl.selection, seed=cfg.tasks.seed + 1000 * qi + k
                )
                layouts.append((query, k, icl_prompt(task, demos, query, template=cfg.icl.template)))
        requests = [Request.chat(list(user_message(p)), base_sampling(cfg)) for _, _, p in layouts]
        responses = session.ask(requests, f"{task.name}: teacher answers k-shot queries")
        for (query, k, prompt), req, resp in zip(layouts, requests, responses, strict=True):
            verdict = response_verdict(resp, keep_cut=False)
            label = task.extract(resp.text, query) if verdict == "kept" else None
            correct = bool(task.check(resp.text, query))
            if verdict == "kept" and cfg.icl.keep != "all" and label is None:
                verdict = "no_answer"
            elif verdict == "kept" and cfg.icl.keep == "gold" and not correct:
                verdict = "wrong_answer"
            target = label if label is not None else resp.text.strip()
            row = {
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
                "task": task.name,
                "k": k,
                "gold": query.answer,
                "teacher_raw": resp.text,
                "teacher_correct": correct,
                "filter": verdict,
                "request_hash": session.teacher.key(req),
            }
            session.file(row, verdict, rows, rejected)
    session.stats.kept = len(rows)
    return rows, rejected


def probes(cfg, tasks, splits) -> list[Probe]:
    """Held-out questions 0-shot and eval_k-shot with gold demonstrations from the training split."""
    from lmdistill.tasks import icl_prompt, select_demos

    out = []
    for task in tasks:
        pool = splits[task.name]["train"]
        for qi, ex in enumerate(splits[task.name]["heldout"]):
            for k in sorted({0, cfg.icl.eval_k}):
                demos = select_demos(pool, ex, k, method=cfg.icl.selection, seed=cfg.tasks.seed + 7 * qi + k)
                prompt = icl_prompt(task, demos, ex, template=cfg.icl.template)
                out.append(Probe(f"{k}-shot", task, ex, user_message(prompt), cfg.eval.max_new_tokens))
    return out
