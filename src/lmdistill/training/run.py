"""`lmdistill train`: config in, trained student folder out. `lmdistill train` is a thin call to `run`.

The run is composed of parts, each built once from the config (`lmdistill.training.parts`): the data
(tokenized, fingerprinted), the teacher (none, in process, a capture store, a server), the models, the
sampler (the data, or on-policy samples) and the launcher (replicated or FSDP2-sharded);
`lmdistill.training.assemble.make_trainer` puts them into one `DistillTrainer`. The run's folder and its
checkpoints are checked by `lmdistill.training.run_folder`; the student is saved and the held-out report
written by `lmdistill.training.finish`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import set_seed

from lmdistill.config import RunConfig, resolve_teachers
from lmdistill.errors import UserError
from lmdistill.io import atomic_write_json
from lmdistill.models import load_tokenizer
from lmdistill.outputs import is_primary
from lmdistill.training import fsdp
from lmdistill.training.assemble import make_trainer, training_arguments
from lmdistill.training.finish import CONFIG_FILE, heldout_report, report_agreement, save_student
from lmdistill.training.hint_terms import PROJECTIONS_FILE
from lmdistill.training.parts.data import read_rows, read_run_rows, tokenize_run_data, tokenize_train
from lmdistill.training.parts.launcher import STUDENT_DIR, choose_launcher
from lmdistill.training.parts.models import Models, add_lora, build_models, from_rank0, student_base
from lmdistill.training.parts.sampler import choose_sampler
from lmdistill.training.parts.teacher import TeacherPart, check_teacher_settings, teacher_is_read
from lmdistill.training.run_folder import (
    DATA_FINGERPRINT_FILE,
    RERUN_MAY_CHANGE,
    RESUME_MAY_CHANGE,
    check_data_unchanged,
    check_output,
    checkpoint_processes,
    checkpoint_step,
    finished_run,
    resolve_checkpoint,
)

__all__ = [  # what callers imported from here before the run was split into parts
    "CONFIG_FILE",
    "DATA_FINGERPRINT_FILE",
    "RERUN_MAY_CHANGE",
    "RESUME_MAY_CHANGE",
    "STUDENT_DIR",
    "Models",
    "add_lora",
    "build_models",
    "check_output",
    "check_teacher_settings",
    "checkpoint_processes",
    "checkpoint_step",
    "from_rank0",
    "make_trainer",
    "read_rows",
    "report_agreement",
    "resolve_checkpoint",
    "run",
    "save_student",
    "teacher_is_read",
    "tokenize_train",
    "training_arguments",
]


def run(cfg: RunConfig, log=print) -> Path:
    """Train a student as `cfg` says; returns the saved student folder (output_dir/student).

    Nothing is written until every input is checked: the teacher settings, the output folder (not a
    file, not another run's), the checkpoint to resume from, the data (read and tokenized before any
    model loads; on resume, the same data the run recorded), a teacher store or server (checked against
    the run's tokenizer and data) and the models. The folder is then locked for the run and its config
    recorded (`lmdistill.outputs`).
    """
    if not cfg.data.train:
        raise UserError("data.train is empty: give a JSONL file, a datasets folder or a hub name")
    cfg = resolve_teachers(cfg)  # a teachers: list of one is the teacher: spelling
    teacher = TeacherPart.choose(cfg)
    fsdp.check_sharding_settings(cfg)
    out = Path(cfg.train.output_dir)
    output, job, ignore = check_output(cfg)
    done = finished_run(cfg)
    if done:  # before any model loads: nothing is read further and nothing written
        log(done)
        return out / STUDENT_DIR
    set_seed(cfg.train.seed)
    # Data is read and tokenized before any model is loaded: a bad file fails in a second, not after a minute.
    train_rows, eval_rows = read_run_rows(cfg)
    train_rows, eval_rows = teacher.route(cfg, train_rows, eval_rows, log)  # several teachers: each row's
    teacher.open(cfg)
    tokenizer = load_tokenizer(student_base(cfg))  # the one build_models trains with
    data = tokenize_run_data(cfg, train_rows, eval_rows, tokenizer)
    check_data_unchanged(cfg, data.fingerprint, log)
    source = teacher.source(cfg, tokenizer, data)  # a store or server, checked before any weights load
    sampler = choose_sampler(cfg)
    sampler.connect(cfg, tokenizer)  # a vLLM sampler's server too
    models = build_models(cfg, log, source=source, tokenizer=tokenizer)
    log(f"data: {len(data.train)} training examples" + (f", {len(data.eval)} held out" if data.eval else ""))
    trainer = make_trainer(cfg, models, data.train, data.eval, log, sampler=sampler)
    needs = (PROJECTIONS_FILE,) if trainer.hints is not None and trainer.hints.projections is not None else ()
    resume = resolve_checkpoint(cfg.train.resume_from_checkpoint, cfg.train.output_dir, needs=needs)
    with output.claim(job, overwrite=cfg.train.overwrite_output_dir, ignore=ignore, primary=is_primary()):
        if is_primary():
            record = {"train": data.fingerprint, "examples": len(data.train), "source": cfg.data.train}
            atomic_write_json(out / DATA_FINGERPRINT_FILE, record)
        trainer.train(resume_from_checkpoint=resume)
        if trainer.resumed_finished:  # the steps to train came from the data (train.max_steps <= 0)
            saved = (out / STUDENT_DIR).is_dir()
            log(
                f"train: {resume} is at step {trainer.state.global_step}, the run's last: nothing trained; "
                + ("the student is saved already, nothing written" if saved else "saving the student from it")
            )
            if saved:
                return out / STUDENT_DIR
        report = heldout_report(cfg, models, data.eval, out / "eval.json", log)
        choose_launcher(cfg).save(trainer, models, cfg, out, log, report)
        if (
            trainer.is_world_process_zero()
            and trainer.hints is not None
            and trainer.hints.projections is not None
        ):
            trainer.hints.save(out)  # training-only: kept apart from the student folder
            log(f"hint projections saved to {out / PROJECTIONS_FILE}")
    return out / STUDENT_DIR
