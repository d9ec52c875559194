"""`DistillTrainer`: a `transformers.Trainer` whose loss is CE + logits KD from a frozen teacher.

Checkpoints, resume, logging, `accelerate launch`, DeepSpeed/FSDP and peft students work as they do
with the plain Trainer. What this class adds:
- the loss, computed from final hidden states through both heads in token chunks (`lmdistill.chunked`);
- normalisation by the number of target tokens in the whole optimizer step (Trainer's
  `num_items_in_batch`), so gradient accumulation gives the same update as the larger batch;
- non-finite losses: the micro-batch is skipped and counted; `max_nonfinite` in a row stop the run;
- `ce` and `kd` logged separately (per target token).
"""

from __future__ import annotations

import inspect

import torch
from transformers import Trainer

from lmdistill.chunked import Head, LossSpec, chunked_loss
from lmdistill.errors import TrainingDiverged


def final_hidden(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[B, S] ids -> [B, S, H] hidden states that the model's head turns into logits.

    Runs the full model (so DDP/FSDP wrappers see a forward) but asks for logits of the last position
    only; `hidden_states[-1]` is the input of the head (after the final norm) in transformers 5.
    """
    kwargs = {"output_hidden_states": True, "use_cache": False}
    if "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters:
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out.hidden_states[-1]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DDP/FSDP (`.module`) and peft (`get_base_model()`) wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class DistillTrainer(Trainer):
    """Trainer for logits KD. `model` is the student; `teacher` is frozen and never saved.

    Args:
        teacher: the teacher causal LM, or None for CE only (then `spec.kd_weight` is ignored).
        spec: what to compute per token (`LossSpec.from_config(distill_config, vocab)`).
        max_nonfinite: stop after this many non-finite micro-batch losses in a row.
        **kwargs: everything `transformers.Trainer` takes (args, train_dataset, data_collator, ...).
    """

    # compute_loss normalises by the step's target-token count itself.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, teacher=None, spec: LossSpec, max_nonfinite: int = 5, **kwargs):
        super().__init__(*args, **kwargs)
        # Makes Trainer count target tokens over the whole accumulated step (num_items_in_batch) and
        # not divide our already-normalised loss by the accumulation steps (transformers 5.x).
        self.model_accepts_loss_kwargs = True
        self.spec = spec
        self.max_nonfinite = max_nonfinite
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False).eval()
            if next(teacher.parameters()).device != self.args.device:
                teacher.to(self.args.device)
        self.nonfinite_skipped = 0
        self._nonfinite_streak = 0
        self._log_sums = {"ce": 0.0, "kd": 0.0, "tokens": 0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        targets = labels[:, 1:]
        mask = targets != -100  # [B, S-1]
        s_hidden = final_hidden(model, inputs["input_ids"], inputs["attention_mask"])[:, :-1][
            mask
        ]  # [N, H_s]
        t_hidden, t_head = None, None
        if self.teacher is not None and self.spec.kd_weight != 0.0:
            with torch.no_grad():
                t_hidden = final_hidden(self.teacher, inputs["input_ids"], inputs["attention_mask"])
            t_hidden, t_head = t_hidden[:, :-1][mask], Head.of(self.teacher)
        s_head = Head.of(unwrap(model))
        sums = chunked_loss(s_hidden, s_head, targets[mask], self.spec, t_hidden, t_head)

        local = max(sums.tokens, 1)
        denom = num_items_in_batch if num_items_in_batch is not None else local
        loss = sums.total / denom
        if num_items_in_batch is not None and getattr(self.args, "average_tokens_across_devices", False):
            # num_items_in_batch counts every process's tokens; DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes

        if not torch.isfinite(loss.detach()).item():
            loss = self._skip_nonfinite(loss)
        elif model.training:
            self._nonfinite_streak = 0
            self._log_sums["ce"] += sums.ce.item()
            self._log_sums["kd"] += sums.kd.item()
            self._log_sums["tokens"] += sums.tokens
        return (loss, None) if return_outputs else loss

    def _skip_nonfinite(self, loss: torch.Tensor) -> torch.Tensor:
        """Count the bad micro-batch and return a zero loss that backpropagates nothing."""
        self.nonfinite_skipped += 1
        self._nonfinite_streak += 1
        if self._nonfinite_streak >= self.max_nonfinite:
            raise TrainingDiverged(
                f"the loss was non-finite ({loss.item()}) for {self._nonfinite_streak} micro-batches in a row "
                f"at step {self.state.global_step}; lower the learning rate, check the data, or use float32"
            )
        return torch.zeros((), device=loss.device, requires_grad=True)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        tokens = self._log_sums["tokens"]
        if tokens and "loss" in logs:
            logs["ce"] = round(self._log_sums["ce"] / tokens, 6)
            logs["kd"] = round(self._log_sums["kd"] / tokens, 6)
            logs["target_tokens"] = tokens
            self._log_sums = {"ce": 0.0, "kd": 0.0, "tokens": 0}
        if self.nonfinite_skipped:
            logs["nonfinite_skipped"] = self.nonfinite_skipped
        super().log(logs, *args, **kwargs)
