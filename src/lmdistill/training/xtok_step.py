"""The training step for a teacher with another tokenizer (distill.cross_tokenizer), beside the trainer.

`DistillTrainer.compute_loss` hands a batch from `lmdistill.xtok.data.XtokCollator` to
`CrossTokenizerStep.compute_loss`, which computes

    loss = ((1 - kd_ratio) * CE + kd_ratio * T^2 * X) / target tokens of the optimizer step

where CE is the student's usual cross-entropy on its own tokens (`lmdistill.chunked`) and X the
cross-tokenizer term summed over the batch's aligned groups (`lmdistill.xtok.losses.xtok_loss`: ULD's
sorted-L1, or byte-aligned matching), both computed from final hidden states through the heads in
chunks. The teacher is asked through the white-box interface (`TeacherSource.score`) for its final
hidden states on its OWN token ids; only a dense answer (the in-process teacher) carries them.
Normalisation, non-finite handling and logging are the trainer's (same counters, same rules).
"""

from __future__ import annotations

import torch

from lmdistill.chunked import Head, LossSpec, chunked_loss
from lmdistill.models.forward import final_hidden, unwrap
from lmdistill.teachers.whitebox import TeacherQuery, TeacherSource
from lmdistill.xtok.losses import Side, XtokSpec, xtok_loss

#: distill.cross_tokenizer -> `XtokSpec.method`
METHOD = {"byte_aligned": "gold", "uld": "uld"}


class CrossTokenizerStep:
    """What the trainer needs to train on a teacher with another tokenizer.

    Args:
        distill: the run's `DistillConfig` (cross_tokenizer set).
        student_vocab, teacher_vocab: real vocabulary sizes the heads' logits are sliced to.
        shared: (student ids [K], teacher ids [K]) of tokens both vocabularies spell with the same bytes
            (`lmdistill.xtok.vocab.shared_token_ids`); needed for byte_aligned, ignored by uld.
        teacher_pad_token_id: what the collator pads the teacher's ids with.
    """

    def __init__(
        self,
        distill,
        *,
        student_vocab: int,
        teacher_vocab: int,
        shared: tuple[torch.Tensor, torch.Tensor] | None,
        teacher_pad_token_id: int,
    ):
        self.spec = XtokSpec(
            method=METHOD[distill.cross_tokenizer],
            loss=distill.loss,
            temperature=distill.temperature,
            beta=distill.beta,
            alpha=distill.alpha,
            matched_weight=distill.xtok_matched_weight,
            unmatched_weight=distill.xtok_unmatched_weight,
            chunk_size=distill.xtok_chunk_size,
        )
        # CE only through the chunked loss: its KD term is replaced by the cross-tokenizer term.
        self.ce_spec = LossSpec(ce_weight=1.0 - distill.kd_ratio, kd_weight=0.0, vocab=student_vocab)
        self.kd_weight = distill.kd_ratio * distill.temperature**2
        self.student_vocab, self.teacher_vocab = student_vocab, teacher_vocab
        self.shared = shared if self.spec.method == "gold" else None
        self.teacher_pad_token_id = teacher_pad_token_id

    def collator(self, pad_token_id: int):
        from lmdistill.xtok.data import XtokCollator

        return XtokCollator(pad_token_id=pad_token_id, teacher_pad_token_id=self.teacher_pad_token_id)

    def sums(self, model, teacher: TeacherSource, inputs: dict) -> tuple[torch.Tensor, dict, int]:
        """(total loss sum carrying the gradient, detached parts to log, target tokens) for one micro-batch."""
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        targets = inputs["labels"][:, 1:]
        mask = targets != -100
        weights = inputs.get("loss_weights")  # [B] per example
        s_final = final_hidden(model, ids, attn)  # [B, S, H_s]
        head = Head.of(unwrap(model))
        ce = chunked_loss(
            s_final[:, :-1][mask],
            head,
            targets[mask],
            self.ce_spec,
            weights=None if weights is None else weights[:, None].expand_as(mask)[mask],
        )
        t_ids, t_attn = inputs["teacher_input_ids"], inputs["teacher_attention_mask"]
        t_real = t_attn.bool()
        scores = teacher.score(TeacherQuery(t_ids, t_attn, t_real))  # [N_t, H_t]: every real teacher token
        if scores is None or scores.hidden is None:
            raise ValueError(
                f"cross-tokenizer distillation needs the teacher's hidden states; {teacher.name} did not give them"
            )
        s_real = attn.bool()
        student_side = Side(
            s_final[s_real], head, ids[s_real], inputs["xtok_student_groups"], self.student_vocab
        )
        teacher_side = Side(
            scores.hidden, scores.head, t_ids[t_real], inputs["xtok_teacher_groups"], self.teacher_vocab
        )
        group_weights = None if weights is None else weights[inputs["xtok_group_rows"]]
        shared = None
        if self.shared is not None:
            self.shared = tuple(t.to(ids.device) for t in self.shared)
            shared = self.shared
        x = xtok_loss(student_side, teacher_side, self.spec, shared=shared, weights=group_weights)
        total = ce.total + self.kd_weight * x.total
        parts = {
            "ce": ce.ce,
            "kd": x.total.detach(),
            "kd_matched": x.matched,
            "kd_unmatched": x.unmatched,
        }
        return total, parts, ce.tokens

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        """`DistillTrainer.compute_loss` for cross-tokenizer batches: the same normalisation by the step's
        target tokens, the same non-finite skipping and the same per-token logging."""
        total, parts, tokens = self.sums(model, trainer.teacher, inputs)
        loss = trainer.finish_loss(model, total, parts, tokens, num_items_in_batch)
        return (loss, None) if return_outputs else loss


def build_step(
    distill, student_tokenizer, teacher_tokenizer, student, teacher, log=print
) -> CrossTokenizerStep:
    """The run's `CrossTokenizerStep`: vocabularies checked against the heads, shared tokens found (byte_aligned)."""
    from lmdistill.data import pad_id
    from lmdistill.errors import UserError
    from lmdistill.models import checked_vocab_size
    from lmdistill.xtok.vocab import shared_token_ids, vocab_bytes

    student_vocab = checked_vocab_size(student_tokenizer, student)
    teacher_vocab = checked_vocab_size(teacher_tokenizer, teacher)
    shared = None
    if METHOD[distill.cross_tokenizer] == "gold":
        try:
            shared = shared_token_ids(
                vocab_bytes(student_tokenizer, student_vocab), vocab_bytes(teacher_tokenizer, teacher_vocab)
            )
        except ValueError as exc:  # a tokenizer whose tokens cannot be read as bytes
            raise UserError(f"distill.cross_tokenizer=byte_aligned: {exc}; use uld") from None
        if len(shared[0]) == 0:
            raise UserError(
                "distill.cross_tokenizer=byte_aligned: the two vocabularies share no token; use uld"
            )
        log(
            f"cross-tokenizer: {distill.cross_tokenizer}; {len(shared[0]):,} tokens shared by the student's "
            f"{student_vocab:,} and the teacher's {teacher_vocab:,}"
        )
    else:
        log(f"cross-tokenizer: uld; student vocabulary {student_vocab:,}, teacher {teacher_vocab:,}")
    return CrossTokenizerStep(
        distill,
        student_vocab=student_vocab,
        teacher_vocab=teacher_vocab,
        shared=shared,
        teacher_pad_token_id=pad_id(teacher_tokenizer),
    )
