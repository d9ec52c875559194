"""The run's launcher part: how the student is placed and saved.

- `Replicated`: one process, or a whole replica per process under torchrun / accelerate (DDP, DeepSpeed
  ZeRO-1/2 through train.extra): `DistillTrainer`; process 0 saves the trained model.
- `Sharded`: `train.fsdp` (and `train.fsdp_teacher`): the student (and the in-process teacher) sharded
  with FSDP2 before the Trainer sees them, `ShardedDistillTrainer`; the full weights are gathered by
  every process, then process 0 saves them (see `lmdistill.training.fsdp`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdistill.config import RunConfig
from lmdistill.training.parts.models import Models
from lmdistill.training.trainer import DistillTrainer

STUDENT_DIR = "student"

#: Called by process 0 with a function returning the trained student as one whole model, before the
#: student is saved (a LoRA student is merged when saved).
Report = Callable[[Callable[[], torch.nn.Module]], None]


@dataclass
class Replicated:
    """The student whole in every process."""

    def prepare(self, models: Models, args, log) -> None:
        """Nothing to place: Trainer moves the model (and wraps it in DDP under torchrun)."""

    def after_hints(self, hints) -> None:
        """Every process drew the same projections (the same seed, the same models)."""

    def trainer_class(self) -> type:
        return DistillTrainer

    def save(self, trainer, models: Models, cfg: RunConfig, out: Path, log, report: Report) -> None:
        from lmdistill.training.finish import save_student

        if trainer.is_world_process_zero():
            report(lambda: trainer.model)
            path = save_student(trainer.model, models.tokenizer, out / STUDENT_DIR, cfg)
            log(f"student saved to {path}")


@dataclass
class Sharded:
    """FSDP2: train.fsdp shards the student, train.fsdp_teacher the in-process teacher."""

    student: bool
    teacher: bool

    def prepare(self, models: Models, args, log) -> None:
        from lmdistill.training import fsdp

        if self.student:
            models.student = fsdp.prepare_student(models.student, args)
            log(fsdp.describe_shards("student", models.student))
        if self.teacher and models.teacher is not None:
            fsdp.prepare_teacher(models.teacher, args)
            log(fsdp.describe_shards("teacher", models.teacher))

    def after_hints(self, hints) -> None:
        # Process 0 built its models on the CPU (a shrunk student's init draws random numbers), the others
        # on meta (which draws none): their RNGs may differ here, and so would projections with a random
        # init (a student wider than the teacher). Process 0's are the ones one process would have.
        if hints is not None and hints.projections is not None:
            from lmdistill.training import fsdp

            fsdp.broadcast_from_rank0(hints.projections)

    def trainer_class(self) -> type:
        if not self.student:
            return DistillTrainer
        from lmdistill.training.fsdp import ShardedDistillTrainer

        return ShardedDistillTrainer

    def save(self, trainer, models: Models, cfg: RunConfig, out: Path, log, report: Report) -> None:
        if not self.student:
            return Replicated().save(trainer, models, cfg, out, log, report)
        from lmdistill.models import load_model
        from lmdistill.training import fsdp
        from lmdistill.training.finish import save_student

        state = fsdp.gather_student(trainer.model)  # a collective: every process takes part
        if not trainer.is_world_process_zero():
            return None
        path = save_student(
            fsdp.saveable(trainer.model), models.tokenizer, out / STUDENT_DIR, cfg, state_dict=state
        )
        log(f"student saved to {path}")

        def whole_student() -> torch.nn.Module:  # the saved folder, on the teacher's device
            device = next(models.teacher.parameters()).device if models.teacher is not None else "cpu"
            return load_model(str(path)).to(device).eval()

        report(whole_student)
        return None


def choose_launcher(cfg: RunConfig) -> Replicated | Sharded:
    t = cfg.train
    return Sharded(t.fsdp, t.fsdp_teacher) if (t.fsdp or t.fsdp_teacher) else Replicated()
