"""`lmdistill recipe CONFIG.yaml`: teacher data, student training and evaluation for one black-box method.

Steps: draw the tasks' training and held-out questions; ask the teacher (cached: a rerun sends only
what is missing) for the method's training data, filtered with a reason for every dropped row; ask the
teacher the held-out probes; measure the untrained student on the same probes; train one student per
data set (`lmdistill train` underneath); measure each; write report.md, results.json, the
per-probe answers (predictions.jsonl) and the data (data/*.jsonl, data/rejected.jsonl).
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from pathlib import Path

from lmdistill.errors import UserError
from lmdistill.generate.config import TEACHER_CLIENT_KEYS
from lmdistill.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from lmdistill.outputs import Output
from lmdistill.recipes import cot, icl, instruct
from lmdistill.recipes.common import (
    TeacherSession,
    load_trained,
    model_answers,
    score,
    student_before,
    train_student,
)
from lmdistill.recipes.report import render

METHODS = {"icl": icl, "cot": cot, "instruct": instruct}


def draw_splits(cfg) -> tuple[list, dict]:
    from lmdistill.tasks import get_task

    tasks = [get_task(name) for name in cfg.tasks.names]
    if len({t.name for t in tasks}) != len(tasks):
        raise UserError(f"tasks.names lists a task twice: {cfg.tasks.names}")
    t = cfg.tasks
    splits = {
        task.name: {
            "train": task.examples("train", t.train_counts.get(name, t.train_per_task), seed=t.seed),
            "heldout": task.examples("heldout", t.heldout_counts.get(name, t.heldout_per_task), seed=t.seed),
        }
        for name, task in zip(cfg.tasks.names, tasks, strict=True)
    }
    return tasks, splits


#: Settings a rerun may change and still be the same recipe (it resumes from the teacher cache).
RERUN_MAY_CHANGE = (
    "train.overwrite_output_dir",
    "train.logging_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.report_to",
    *TEACHER_CLIENT_KEYS,
    "eval.batch_size",
)


def run_recipe(cfg, teacher=None, log=print) -> dict:
    """Run the recipe `cfg` describes; returns results.json's content. `teacher`: a ready backend (tests).

    output_dir is checked first and claimed (locked, config recorded in recipe_config.yaml) once the
    tasks are drawn; a folder holding another recipe is refused unless train.overwrite_output_dir.
    """
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    output = Output.folder(
        "recipe",
        out,
        "output_dir",
        products=("report.md", "results.json", "predictions.jsonl", "data"),
        resume_hint="rerun it with its own settings (answers come from the cache)",
        overwrite_hint="set train.overwrite_output_dir=true to replace it",
    )
    job, overwrite = dataclasses.asdict(cfg), cfg.train.overwrite_output_dir
    output.check(job, overwrite=overwrite, ignore=RERUN_MAY_CHANGE)
    method = METHODS[cfg.method]
    tasks, splits = draw_splits(cfg)  # before any model loads: a bad task fails at once
    with output.claim(job, overwrite=overwrite, ignore=RERUN_MAY_CHANGE):
        return _teacher_data_then_students(cfg, out, method, tasks, splits, teacher, log, start)


def _teacher_data_then_students(cfg, out: Path, method, tasks, splits, teacher, log, start: float) -> dict:
    with TeacherSession(cfg, out, teacher) as session:
        data, rejected = method.build_rows(cfg, tasks, splits, session, log)
        data_sets = data if isinstance(data, dict) else {cfg.method: data}
        atomic_write_jsonl(out / "data" / "rejected.jsonl", rejected)
        stats = session.stats
        log(
            f"data: kept {stats.kept}, dropped {sum(stats.dropped.values())} {dict(stats.dropped)}; teacher "
            f"requests sent {stats.requests_sent}, from cache {stats.requests_cached}"
        )
        if not any(data_sets.values()):
            raise UserError(
                f"no training data left after filtering ({sum(stats.dropped.values())} rows dropped: "
                f"{dict(stats.dropped)}); no student was trained. The dropped rows and reasons are in "
                f"{out / 'data' / 'rejected.jsonl'}"
            )
        probes = method.probes(cfg, tasks, splits)
        answers = {"teacher": session.answer(probes)}
        stats = session.stats
    del session
    gc.collect()

    before, tok = student_before(cfg, log)
    answers["student before"] = model_answers(before, tok, probes, batch_size=cfg.eval.batch_size)
    del before
    students = {}
    for name, rows in data_sets.items():
        path = train_student(cfg, rows, name, out, log)
        model, tok = load_trained(path)
        settings = getattr(method, "STUDENT_SETTINGS", {}).get(name)
        mine = [p for p in probes if settings is None or p.setting in settings]
        outputs = model_answers(model, tok, mine, batch_size=cfg.eval.batch_size)
        by_probe = dict(zip(map(id, mine), outputs, strict=True))
        answers[f"student ({name})"] = [by_probe.get(id(p)) for p in probes]
        students[name] = str(path)
        del model
        gc.collect()

    results = {
        "method": cfg.method,
        "tasks": [t.name for t in tasks],
        "data": stats.as_dict() | {"rows": {k: len(v) for k, v in data_sets.items()}},
        "scores": _scores(probes, answers),
        "students": students,
        "seconds": round(time.perf_counter() - start, 1),
        "command": " ".join(["lmdistill", *sys.argv[1:]]) if sys.argv else "",
    }
    if cfg.method == "instruct":
        results["versus_teacher"] = instruct.compare(
            probes, answers["teacher"], answers["student before"], answers[f"student ({cfg.method})"]
        )
    _write_predictions(out, probes, answers)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", render(cfg, results))
    log(render(cfg, results, brief=True))
    log(f"report: {out / 'report.md'}; {results['seconds']:.0f} s in all")
    return results


def _scores(probes, answers: dict[str, list]) -> dict[str, dict]:
    """{model: {"setting / task": {"correct", "n", "accuracy"}}}, over the probes each model answered."""
    table = {}
    for model, outputs in answers.items():
        pairs = [(p, o) for p, o in zip(probes, outputs, strict=True) if o is not None]
        table[model] = score([p for p, _ in pairs], [o for _, o in pairs])
    return table


def _write_predictions(out: Path, probes, answers: dict[str, list]) -> None:
    rows = []
    for i, p in enumerate(probes):
        row = {
            "setting": p.setting,
            "task": p.task.name,
            "question": p.example.question,
            "gold": p.example.answer,
        }
        row["prompt"] = p.messages[-1]["content"]
        for model, outputs in answers.items():
            if outputs[i] is not None:
                row[model] = outputs[i]
                row[f"{model} ok"] = bool(p.task.check(outputs[i], p.example))
        rows.append(row)
    atomic_write_jsonl(out / "predictions.jsonl", rows)
