"""`DistillTrainer`: a `transformers.Trainer` whose loss is CE + logits KD from a frozen teacher.

Checkpoints, resume, logging, `accelerate launch`/`torchrun` (DDP, DeepSpeed ZeRO-1/2) and peft
students work as they do with the plain Trainer. A student sharded with FSDP2 (`train.fsdp`) trains
through `lmdistill.training.fsdp.ShardedDistillTrainer`; ZeRO-3 is refused. What this class adds:
- the loss, computed from final hidden states through the student's head in token chunks
  (`lmdistill.chunked`), against whatever the teacher source answers (`lmdistill.teachers.whitebox`):
  the in-process teacher's hidden states and head, or top-k + tail rows from a store or a server. The
  trainer asks the source and never looks at which kind it is;
- per-example loss weights (the batch's `loss_weights` [B]) on each target token's CE and KD terms
  (hint terms are not weighted);
- normalisation by the number of target tokens in the whole optimizer step (Trainer's
  `num_items_in_batch`), so gradient accumulation gives the same update as the larger batch;
- optional hint terms (`HintTerms`: hidden states, attention relations and maps), same tokens;
- non-finite losses: the micro-batch is skipped and counted, by every process together when any one
  of them sees one; `max_nonfinite` in a row stop the run;
- `ce`, `kd` and each hint term logged separately (per target token).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from lmdistill.chunked import Head, LossSpec
from lmdistill.errors import TrainingDiverged, UserError
from lmdistill.io import public_tree
from lmdistill.models.forward import final_hidden, forward_states, unwrap
from lmdistill.outputs import write_failure, write_failure_message
from lmdistill.teachers.whitebox import InProcessTeacher, TeacherQuery, TeacherSource, teacher_loss
from lmdistill.training.optimizer_checkpoint import has_sharded_optimizer, load_sharded_optimizer


class DistillTrainer(Trainer):
    """Trainer for logits and hint KD. `model` is the student; `teacher` is frozen and never saved.

    Args:
        teacher: a `TeacherSource` (a bare causal LM is wrapped in `InProcessTeacher`), or None for
            CE only. A source that answers None for a batch (a store asked about held-out examples)
            gives CE only for that batch.
        spec: what to compute per token (`LossSpec.from_config(distill_config, vocab)`).
        xtok: a `CrossTokenizerStep` when the teacher has another tokenizer, or a
            `RoutedCrossTokenizerStep` when some of several routed teachers have (batches from its collator).
        hints: resolved hint terms (`HintTerms`), or None for logits KD only. They read the teacher's
            internal states, so they need an `InProcessTeacher`. Their projections are optimised with
            the student and saved in each checkpoint as `hint_projections.safetensors`.
        max_nonfinite: stop after this many non-finite micro-batch losses in a row.
        **kwargs: everything `transformers.Trainer` takes (args, train_dataset, data_collator, ...).
    """

    # compute_loss normalises by the step's target-token count itself.
    loss_is_scaled_for_ga = True

    def __init__(
        self, *args, teacher=None, spec: LossSpec, hints=None, max_nonfinite: int = 5, xtok=None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        # Makes Trainer count target tokens over the whole accumulated step (num_items_in_batch) and
        # not divide our already-normalised loss by the accumulation steps (transformers 5.x).
        self.model_accepts_loss_kwargs = True
        self.spec = spec
        self.hints = hints
        self.max_nonfinite = max_nonfinite
        self.xtok = xtok  # CrossTokenizerStep or RoutedCrossTokenizerStep (another tokenizer), or None
        if isinstance(teacher, torch.nn.Module):
            teacher = InProcessTeacher(teacher)
        self.teacher: TeacherSource | None = teacher
        if teacher is not None:
            teacher.to(self.args.device)
        if hints is not None:
            if not isinstance(teacher, InProcessTeacher):
                raise ValueError("hint terms need the teacher model in this process")
            if hints.projections is not None:
                hints.projections.to(self.args.device)
            self.add_callback(_ProjectionCallback(self))
        self.nonfinite_skipped = 0
        self._nonfinite_streak = 0
        self._log_sums: dict[str, float] = {}
        #: Set by `train`: the checkpoint resumed from was at (or past) the run's last step, so the
        #: weights were loaded from it and no step was trained.
        self.resumed_finished = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.xtok is not None:  # a teacher with another tokenizer: its own step, same normalisation
            return self.xtok.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        total, parts, tokens = self.loss_sums(model, inputs)
        loss = self.finish_loss(model, total, parts, tokens, num_items_in_batch)
        return (loss, None) if return_outputs else loss

    def loss_sums(self, model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(loss sum carrying the gradient, detached sums to log, target tokens) of one `DistillCollator`
        batch against `self.teacher`: CE + KD (+ hint terms), not yet normalised. A step routed across
        tokenizers asks it for its rows of the run's tokenizer (`lmdistill.training.xtok_routed_step`)."""
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        targets = inputs["labels"][:, 1:]
        mask = targets != -100  # [B, S-1]: position t predicts token t+1
        query = TeacherQuery.from_batch(inputs)  # the same positions as [B, S]: the teacher's and the hints'
        positions = query.positions
        hints = self.hints
        use_kd = self.teacher is not None and self.spec.kd_weight != 0.0
        weights = inputs.get("loss_weights")  # [B] per example -> [N] per target token
        weights = None if weights is None else weights[:, None].expand_as(mask)[mask]
        s_out = t_out = s_cap = t_cap = scores = None
        if hints is None:  # logits KD only: no intermediate states are returned or kept
            s_final = final_hidden(model, ids, attn)
            if use_kd:
                scores = self.teacher.score(query)
        else:  # hint terms capture the teacher model's own states in the same forward
            teacher = self.teacher.model
            with hints.capture(unwrap(model), "student") as s_cap:
                s_out = forward_states(model, ids, attn, attentions=hints.needs_attentions)
            with torch.no_grad(), hints.capture(teacher, "teacher") as t_cap:
                t_out = forward_states(teacher, ids, attn, attentions=hints.needs_attentions)
            s_final = s_out.hidden_states[-1]
            if use_kd:
                scores = self.teacher.scores(t_out.hidden_states[-1], positions)
        sums = teacher_loss(  # chunked_loss with this answer; part by part when several teachers routed it
            s_final[:, :-1][mask],  # [N, H_s]
            Head.of(unwrap(model)),
            targets[mask],
            self.spec,
            scores,
            weights=weights,
        )
        total = sums.total
        parts = {"ce": sums.ce, "kd": sums.kd}
        if hints is not None:  # the same positions, hence the same token count, as the logits terms
            extra = hints.sums(s_out, t_out, s_cap, t_cap, attn, positions)
            weights = hints.weights()
            for name, value in extra.items():
                total = total + weights[name] * value
                parts[name] = value.detach()
        return total, parts, sums.tokens

    def finish_loss(
        self,
        model,
        total: torch.Tensor,
        parts: dict[str, torch.Tensor],
        tokens: int,
        num_items_in_batch=None,
        log_sums: dict | None = None,
    ) -> torch.Tensor:
        """The micro-batch loss from its sum over `tokens` target tokens, the same for every kind of
        step (logits KD, cross-tokenizer, on-policy): divided by the target tokens of the whole optimizer
        step (all processes), skipped together when non-finite anywhere, and `parts` (detached sums)
        added to `log_sums` (default: the trainer's own) for per-token logging."""
        denom = num_items_in_batch if num_items_in_batch is not None else max(tokens, 1)
        loss = total / denom
        if num_items_in_batch is not None and getattr(self.args, "average_tokens_across_devices", False):
            # num_items_in_batch counts every process's tokens; DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
        if self._nonfinite_anywhere(loss):
            return self._skip_nonfinite(loss, model)
        if model.training:
            self._nonfinite_streak = 0
            sums = self._log_sums if log_sums is None else log_sums
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            sums["tokens"] = sums.get("tokens", 0) + tokens
        return loss

    @staticmethod
    def _nonfinite_anywhere(loss: torch.Tensor) -> bool:
        """Whether the micro-batch loss is non-finite here or on any other process. All processes
        decide together: a process that skipped alone would leave the others waiting in DDP's
        gradient all-reduce."""
        bad = not torch.isfinite(loss.detach()).item()
        if _world_size() > 1:
            flag = torch.tensor([float(bad)], device=loss.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = flag.item() > 0
        return bad

    def _skip_nonfinite(self, loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
        """Count the bad micro-batch and return a zero loss that changes nothing.

        One process: a constant, so no parameter gets a gradient from it. Several: zero times one
        element of every trainable parameter, so each gets a zero gradient and DDP's all-reduce runs
        on every process as usual.
        """
        self.nonfinite_skipped += 1
        self._nonfinite_streak += 1
        if self._nonfinite_streak >= self.max_nonfinite:
            raise TrainingDiverged(
                f"the loss was non-finite ({loss.item()}) for {self._nonfinite_streak} micro-batches in a row "
                f"at step {self.state.global_step}; lower the learning rate, check the data, or use float32"
            )
        if _world_size() > 1 and model.training:
            # FSDP2: each process's own shard (possibly empty), so the loss stays a plain tensor.
            local = [
                p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if p.requires_grad
            ]
            zero = [p.reshape(-1)[:1].sum() * 0.0 for p in local]
            if zero:
                return torch.stack(zero).sum().nan_to_num(0.0)
        return torch.zeros((), device=loss.device, requires_grad=True)

    def create_optimizer(self, model=None):
        """The student's optimizer, plus a parameter group for the hint projections (no weight decay)."""
        optimizer = super().create_optimizer(model)
        params = self.hints.parameters() if self.hints is not None else []
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if params and not known.intersection(map(id, params)):
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def train(self, resume_from_checkpoint=None, **kwargs):
        """As Trainer.train; on resume the hint projections are restored from the checkpoint too."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if resume_from_checkpoint and self.hints is not None:
            self.hints.load(resume_from_checkpoint)
        if self.hints is not None:
            self.hints.activate()
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            if self.hints is not None:
                self.hints.restore()  # e.g. back from eager attention, for whoever uses the models next

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        """As Trainer's, but a resume from a checkpoint at (or past) `max_steps` trains nothing, and a
        resumed run logs, evaluates and saves every N steps as this run's settings say.

        Trainer checks `max_steps` only after a step: resumed from a finished run whose last step is not
        on an epoch boundary, it re-enters the last epoch and trains (and saves) step max_steps + 1.
        Returning the epoch count as the epochs already trained leaves its epoch loop empty. And it takes
        logging_steps, eval_steps and save_steps from the checkpoint's trainer_state.json, though a rerun
        may change them (`lmdistill.training.run_folder.RERUN_MAY_CHANGE`).
        """
        epochs, batches = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        self.state.compute_steps(self.args, max_steps)
        self.resumed_finished = resume_from_checkpoint is not None and self.state.global_step >= max_steps
        return (num_train_epochs, 0) if self.resumed_finished else (epochs, batches)

    def checkpoint_folder(self, trial=None) -> Path:
        """The checkpoint-N folder Trainer saves the current step into."""
        return Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"

    def _save_checkpoint(self, model, trial) -> None:
        """As Trainer's, into an empty folder: a resume from an earlier checkpoint trains this step again,
        and Trainer would write into the old checkpoint-N, mixing its files with the new ones (with
        another number of processes they differ: optimizer.pt or optimizer_fsdp/, one RNG file or one
        per process), so the old folder is removed first, as its files would have been replaced."""
        folder = self.checkpoint_folder(trial)
        stale = folder.is_dir()
        self.accelerator.wait_for_everyone()  # every process has looked before process 0 removes it
        if stale and self.args.should_save:
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial)
        except Exception as exc:
            self._checkpoint_failed(exc, folder)
            raise
        if self.args.should_save:  # safetensors writes 0600: others could not resume from it or serve it
            public_tree(folder)

    def _checkpoint_failed(self, exc: Exception, folder: Path) -> None:
        """A checkpoint the file system refused (no space, read-only, permission denied): the unfinished
        folder is removed (`latest` would skip it: it has no trainer_state.json; removed, it frees its
        space) and the run stops with one UserError naming the folder and the cause. Returns for any
        other error, which the caller re-raises."""
        cause = write_failure(exc, folder)
        if cause is None:
            return
        removed = ""
        if self.args.should_save and folder.is_dir() and not (folder / "trainer_state.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # on a read-only file system it stays, skipped
            removed = "" if folder.exists() else f" (the unfinished {folder.name} was removed)"
        raise UserError(
            write_failure_message("train", "train.output_dir", exc, folder, cause) + removed
        ) from None

    def _optimized(self) -> torch.nn.Module:
        """Every module the optimizer updates: the student and, when there are any, the hint
        projections (the optimizer's last group), so each optimizer state has a parameter name."""
        if self.hints is None or self.hints.projections is None:
            return self.model
        return torch.nn.ModuleDict({"student": self.model, "hint_projections": self.hints.projections})

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """As Trainer's; a checkpoint of a sharded run (`train.fsdp`: its optimizer in a
        `torch.distributed.checkpoint` folder, no optimizer.pt) is read whole into this unsharded one."""
        if checkpoint is None or self.is_deepspeed_enabled or not has_sharded_optimizer(checkpoint):
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_sharded_optimizer(self._optimized(), self.optimizer, self.lr_scheduler, checkpoint)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        tokens = self._log_sums.pop("tokens", 0)
        if tokens and "loss" in logs:
            for name, value in self._log_sums.items():
                logs[name] = round(value / tokens, 6)  # per target token
            logs["target_tokens"] = tokens
            self._log_sums = {}
        elif tokens:
            self._log_sums["tokens"] = tokens
        if self.nonfinite_skipped:
            logs["nonfinite_skipped"] = self.nonfinite_skipped
        super().log(logs, *args, **kwargs)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _ProjectionCallback(TrainerCallback):
    """Trainer only clips, zeroes and saves `model`'s parameters; this does the same for the projections.

    Clipping uses the same max_grad_norm on the projections' own gradient norm.
    """

    def __init__(self, trainer: DistillTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        params = [p for p in self.trainer.hints.parameters() if p.grad is not None]
        if params and torch.distributed.is_available() and torch.distributed.is_initialized():
            # The projections live outside the DDP-wrapped student: average their gradients as DDP does.
            world = torch.distributed.get_world_size()
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        if params and args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)

    def on_optimizer_step(self, args, state, control, **kwargs):
        for p in self.trainer.hints.parameters():
            p.grad = None

    def on_save(self, args, state, control, **kwargs):
        folder = self.trainer.checkpoint_folder()
        if state.is_world_process_zero and folder.is_dir():
            self.trainer.hints.save(folder)
