"""The training step when several teachers are routed by row and some tokenize differently from the
student (`teachers[i].cross_tokenizer`, `routing.mode: route`), beside the trainer.

A batch from `lmdistill.xtok.data.RoutedXtokCollator` carries each teacher's rows batched apart. The
rows of teachers that share the student's tokenizer go through today's routed loss
(`DistillTrainer.loss_sums`: `SeveralTeachers` answers each row by its own teacher), and the rows of each
cross-tokenizer teacher through that teacher's `CrossTokenizerStep.sums` (ULD or byte-aligned matching).
Nothing of either loss is computed here: both are sums over their rows' target tokens,

    plain rows:      sum over their target tokens of (1 - kd_ratio) CE + kd_ratio T_i^2 D
    teacher j's rows: sum over their target tokens of (1 - kd_ratio) CE + kd_ratio T_j^2 X_j (over spans)

so the micro-batch's loss is their sum divided by the target tokens of the whole optimizer step
(`DistillTrainer.finish_loss`): a per-token mean over the batch, exactly as a one-teacher run divides.
A batch routed to one cross-tokenizer teacher alone gives that teacher's one-teacher step; one routed
to teachers of the student's tokenizer alone, today's routed loss. The student runs once per part
(each part's rows only); the teachers, each on its own rows in its own tokenization.
"""

from __future__ import annotations

import torch

from lmdistill.training.xtok_step import CrossTokenizerStep


class RoutedCrossTokenizerStep:
    """What the trainer needs when some routed teachers have another tokenizer.

    steps: {index in `teachers:`: that teacher's `CrossTokenizerStep`} for the cross-tokenizer teachers
    that rows route to; their sources are the members of the trainer's `SeveralTeachers`.
    """

    def __init__(self, steps: dict[int, CrossTokenizerStep]):
        if not steps:
            raise ValueError("a routed cross-tokenizer step needs at least one cross-tokenizer teacher")
        self.steps = steps

    def collator(self, pad_token_id: int):
        from lmdistill.xtok.data import RoutedXtokCollator

        pads = {i: step.teacher_pad_token_id for i, step in self.steps.items()}
        return RoutedXtokCollator(pad_token_id=pad_token_id, teacher_pad_token_ids=pads)

    def sums(self, trainer, model, inputs: dict) -> tuple[torch.Tensor, dict, int]:
        """(total loss sum carrying the gradient, detached sums to log, target tokens) of one micro-batch:
        each part's own sums, added."""
        pieces = []
        for key, part in inputs["routed_parts"].items():
            if key == "plain":
                pieces.append(trainer.loss_sums(model, part))
                continue
            i = int(key)
            if i not in self.steps:
                raise ValueError(f"rows routed to teachers[{i}], which has no cross-tokenizer step")
            source = trainer.teacher.members[i].source
            pieces.append(self.steps[i].sums(model, source, part))
        if not pieces:
            raise ValueError("a routed batch with no rows")
        total = sum((p[0] for p in pieces[1:]), pieces[0][0])
        parts: dict[str, torch.Tensor] = {}
        for _, logged, _ in pieces:
            for name, value in logged.items():
                parts[name] = parts[name] + value if name in parts else value
        return total, parts, sum(p[2] for p in pieces)

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        """`DistillTrainer.compute_loss` for routed batches: the same normalisation by the step's target
        tokens, non-finite skipping and per-token logging as every other step."""
        total, parts, tokens = self.sums(trainer, model, inputs)
        loss = trainer.finish_loss(model, total, parts, tokens, num_items_in_batch)
        return (loss, None) if return_outputs else loss
