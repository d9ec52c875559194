"""The run's folder: checked before any work (not a file, not another job's), the checkpoint to resume
from (complete, not past train.max_steps, the same global batch, the same data), a finished run
recognised so a rerun writes nothing."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from lmdistill.config import RunConfig, TrainConfig
from lmdistill.errors import UserError
from lmdistill.outputs import Output, differences
from lmdistill.training.finish import CONFIG_FILE
from lmdistill.training.hint_terms import PROJECTIONS_FILE
from lmdistill.training.parts.launcher import STUDENT_DIR

DATA_FINGERPRINT_FILE = "data_fingerprint.json"  # the tokenized training data the run trains on


def resolve_checkpoint(value: str | None, output_dir: str, *, needs: tuple[str, ...] = ()) -> str | None:
    """`latest` -> the newest complete checkpoint-N in output_dir (a UserError if there is none); a path
    is checked.

    Complete means Trainer wrote its `trainer_state.json` (its last file) and every file in `needs`
    is there: a run killed while saving leaves a folder that is skipped, not resumed from.
    """
    if value is None:
        return None
    if value == "latest":
        complete = []
        for folder in Path(output_dir).glob("checkpoint-*"):
            step = folder.name.removeprefix("checkpoint-")
            files = ("trainer_state.json", *needs)
            if step.isdigit() and all((folder / name).is_file() for name in files):
                complete.append((int(step), folder))
        if not complete:
            raise UserError(
                f"train.resume_from_checkpoint=latest: no checkpoint to resume from in {output_dir} (no complete "
                f"checkpoint-N folder with {', '.join(('trainer_state.json', *needs))}); drop the setting to "
                "start a new run"
            )
        return str(max(complete)[1])
    if not Path(value).is_dir():
        raise UserError(f"train.resume_from_checkpoint: no checkpoint folder at {value}")
    return value


def checkpoint_step(checkpoint: str | os.PathLike) -> int | None:
    """The optimizer steps a checkpoint holds (its trainer_state.json's global_step); None without one."""
    path = Path(checkpoint) / "trainer_state.json"
    try:
        step = json.loads(path.read_text(encoding="utf-8"))["global_step"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    return int(step)


def _max_steps(t: TrainConfig) -> int:
    """The run's last step as TrainingArguments will see it (train.extra may set it); <= 0: from epochs."""
    return int(t.extra.get("max_steps", t.max_steps))


def finished_run(cfg: RunConfig) -> str | None:
    """A resume of a run that is finished (its checkpoint at train.max_steps, its student saved): the
    one line to log instead of training, else None. (Trainer would train one step past the last and
    save checkpoint-(N+1) when the last step is not at an epoch's end.)"""
    t = cfg.train
    if t.resume_from_checkpoint is None or _max_steps(t) <= 0:
        return None
    checkpoint = resolve_checkpoint(t.resume_from_checkpoint, t.output_dir)
    step = checkpoint_step(checkpoint)
    if step is None or step < _max_steps(t) or not (Path(t.output_dir) / STUDENT_DIR).is_dir():
        return None  # more steps to train, or the run stopped before saving its student: saved from it
    return (
        f"train: {checkpoint} is at step {step} = train.max_steps: the run is finished and its student "
        "saved; nothing trained, nothing written (raise train.max_steps to train further)"
    )


def check_data_unchanged(cfg: RunConfig, fingerprint: str, log=print) -> None:
    """On resume, the tokenized training data must be the data the run recorded: a resume skips the first
    global_step x batch examples of what it is given, so other data means training on other rows with no
    word. UserError, or a warning with train.resume_with_changed_data; nothing to compare for a run that
    recorded no fingerprint (written by an older lmdistill)."""
    t = cfg.train
    if t.resume_from_checkpoint is None:
        return
    path = Path(t.output_dir) / DATA_FINGERPRINT_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log(f"train: {path} not found (a run from an older lmdistill): the data cannot be compared")
        return
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    before = recorded.get("train") if isinstance(recorded, dict) else None
    if before == fingerprint:
        return
    what = (
        f"the training data differs from the data {t.output_dir} was trained on ({cfg.data.train}: "
        f"{recorded.get('examples', '?') if isinstance(recorded, dict) else '?'} examples then, now another "
        f"tokenized content)"
    )
    if t.resume_with_changed_data:
        log(f"train: warning: {what}; resuming anyway (train.resume_with_changed_data=true)")
        return
    raise UserError(
        f"train.resume_from_checkpoint: {what}; a resume would skip and train other rows than the run did. "
        "Restore the data, or set train.resume_with_changed_data=true to resume on the new data"
    )


#: Settings that may change between a run and its rerun in the same folder without making it another run.
RERUN_MAY_CHANGE = (
    "train.resume_from_checkpoint",
    "train.resume_with_changed_data",
    "train.overwrite_output_dir",
    "train.logging_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.report_to",
)
#: ... and, when resuming, how long it trains, and how each step's batch is split (so a run may resume
#: with another number of processes, sharded or not, when the global batch stays the same: checked).
RESUME_MAY_CHANGE = (
    "train.max_steps",
    "train.num_train_epochs",
    "train.per_device_train_batch_size",
    "train.gradient_accumulation_steps",
    "train.fsdp",
    "train.fsdp_teacher",
)


def check_output(cfg: RunConfig) -> tuple[Output, dict, tuple[str, ...]]:
    """Check train.output_dir and the checkpoint to resume from, before any work (read-only).

    Returns the folder, the job recorded in it (the resolved config) and the settings a rerun may change.
    """
    t = cfg.train
    job = dataclasses.asdict(cfg)
    resuming = t.resume_from_checkpoint is not None
    ignore = RERUN_MAY_CHANGE + (RESUME_MAY_CHANGE if resuming else ())
    output = Output.folder(
        "train",
        t.output_dir,
        "train.output_dir",
        products=("checkpoint-*", STUDENT_DIR, "eval.json", PROJECTIONS_FILE),
        resume_hint="resume it with train.resume_from_checkpoint=latest and its settings",
        overwrite_hint="set train.overwrite_output_dir=true to replace it",
    )
    if resuming and t.overwrite_output_dir:
        raise UserError(
            "train.resume_from_checkpoint and train.overwrite_output_dir=true contradict each other: "
            "resume the run, or replace it"
        )
    if resuming:
        checkpoint = resolve_checkpoint(t.resume_from_checkpoint, t.output_dir)
        step = checkpoint_step(checkpoint)
        if step is not None and 0 < _max_steps(t) < step:
            raise UserError(
                f"train.max_steps={_max_steps(t)} is below the step of {checkpoint} ({step}): a resume cannot "
                "train backwards; raise train.max_steps, or resume an earlier checkpoint"
            )
        run_dir = Path(checkpoint).parent
        recorded = run_dir / CONFIG_FILE
        if recorded.is_file():
            try:
                old = yaml.safe_load(recorded.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise UserError(f"{recorded}: cannot be read ({exc.__class__.__name__})") from None
            diff = differences(old, job, ignore)
            if diff:
                raise UserError(
                    f"train.resume_from_checkpoint: {checkpoint} belongs to a run with other settings "
                    f"({'; '.join(diff[:4])}); resume with that run's settings (see {recorded}), or drop "
                    "train.resume_from_checkpoint to start a new run in another train.output_dir"
                )
            _check_global_batch(checkpoint, (old.get("train") if isinstance(old, dict) else None) or {}, t)
    output.check(job, overwrite=t.overwrite_output_dir, ignore=ignore)
    return output, job, ignore


def checkpoint_processes(checkpoint: str | os.PathLike) -> int | None:
    """How many processes wrote a checkpoint: Trainer saves one RNG file per process (rng_state_<rank>.pth),
    or rng_state.pth in a single one; None when there is none."""
    folder = Path(checkpoint)
    ranks = list(folder.glob("rng_state_*.pth"))
    return len(ranks) if ranks else 1 if (folder / "rng_state.pth").is_file() else None


def _check_global_batch(checkpoint: str, old: dict, t: TrainConfig) -> None:
    """A resume may change the number of processes and how each step's batch is split among them, not
    the global batch: the resumed run skips global_step x that many examples, and its learning rate
    schedule and optimizer state were tuned to it. UserError naming both layouts otherwise."""
    then = checkpoint_processes(checkpoint)
    now = int(os.environ.get("WORLD_SIZE", "1") or 1)
    try:
        per_device, accumulate = (
            int(old["per_device_train_batch_size"]),
            int(old["gradient_accumulation_steps"]),
        )
    except (KeyError, TypeError, ValueError):
        return  # recorded by an lmdistill without these settings: nothing to compare
    if then is None:
        return
    before = then * per_device * accumulate
    after = now * t.per_device_train_batch_size * t.gradient_accumulation_steps
    if before != after:
        raise UserError(
            f"train.resume_from_checkpoint: {checkpoint} was written by {then} process(es) x "
            f"{per_device} examples x {accumulate} accumulated = {before} examples per step; this run has {now} "
            f"x {t.per_device_train_batch_size} x {t.gradient_accumulation_steps} = {after}: keep {before} "
            "(train.per_device_train_batch_size x train.gradient_accumulation_steps x processes)"
        )
