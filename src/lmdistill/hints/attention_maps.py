"""Attention-map hints: KL between the teacher's and the student's attention probabilities.

Only for models that return attention weights: eager attention with `output_attentions=True` (SDPA and
flash attention return none). Layer i's map is `outputs.attentions[i]` (no embedding entry here).
For any attention implementation, `relations.relation_loss` is the alternative.
"""

from __future__ import annotations

import torch

from lmdistill.errors import UserError


def layer_attentions(outputs, layer: int) -> torch.Tensor:
    """`outputs.attentions[layer]` ([B, H, S, S]); UserError when the model returned no attentions."""
    attentions = getattr(outputs, "attentions", None)
    if not attentions or attentions[layer] is None:
        raise UserError(
            "the model returned no attention weights: attention-map hints need eager attention "
            "(load with attn_implementation='eager' and call with output_attentions=True), or use relation hints"
        )
    return attentions[layer]


def attention_map_kl(
    student_attn: torch.Tensor, teacher_attn: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(teacher map ‖ student map) per query row, averaged over heads, summed over counted rows.

    Args:
        student_attn: [B, H_s, S, S] attention probabilities; teacher_attn: [B, H_t, S, S] (detached here).
            With H_s == H_t the heads are compared one to one; otherwise both maps are first averaged
            over heads (the average of distributions is a distribution).
        mask: bool [B, S], the query rows that count.

    The result is the same scale in both cases (mean over compared heads), a float32 (or wider) scalar.
    Zero probabilities (causal or padding keys) are clamped before the log: a key where the teacher has 0
    contributes exactly 0, and no NaN reaches the gradient.
    """
    if student_attn.shape[0] != teacher_attn.shape[0] or student_attn.shape[2:] != teacher_attn.shape[2:]:
        raise ValueError(
            f"attention maps differ beyond the head axis: student {tuple(student_attn.shape)}, "
            f"teacher {tuple(teacher_attn.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(student_attn.dtype, teacher_attn.dtype), torch.float32)
    student, teacher = student_attn.to(dtype), teacher_attn.detach().to(dtype)
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    # clamp sends no gradient to entries at 0, so 1 / tiny from the log's backward is multiplied by 0.
    tiny = torch.finfo(dtype).tiny
    per_row = (teacher * (teacher.clamp_min(tiny).log() - student.clamp_min(tiny).log())).sum(-1)
    return per_row.mean(1).masked_fill(~mask.bool(), 0.0).sum()
