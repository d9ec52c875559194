"""Hidden-state hints: the student's layer outputs, projected, should match the teacher's."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmdistill.hints.mapping import pair_key
from lmdistill.hints.metrics import get_metric
from lmdistill.hints.projections import HintProjections


def _layer(hidden_states: Sequence[torch.Tensor], layer: int, who: str) -> torch.Tensor:
    # hidden_states[0] is the embeddings, so decoder layer i is entry i + 1.
    if not 0 <= layer < len(hidden_states) - 1:
        raise ValueError(
            f"{who} layer {layer} is not in its hidden states ({len(hidden_states)} entries: the embeddings "
            f"and layers 0..{len(hidden_states) - 2}); was the model run with output_hidden_states=True?"
        )
    return hidden_states[layer + 1]


def hidden_state_loss(
    student_hidden_states: Sequence[torch.Tensor],
    teacher_hidden_states: Sequence[torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    projections: HintProjections,
    metric: str,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hint loss summed over counted tokens, averaged over layer pairs.

    Args:
        student_hidden_states, teacher_hidden_states: `outputs.hidden_states` of each model run with
            `output_hidden_states=True` on the same tokens: L + 1 tensors [B, S, D] (entry 0 = embeddings).
        pairs: (student_layer, teacher_layer) pairs; layer i is `hidden_states[i + 1]`.
        projections: maps student rows [N, d_s] to the teacher's width [N, d_t], keyed by pair.
        metric: a name in `HINT_METRICS` ("mse", "cosine", "ln_mse").
        mask: bool [B, S], True where a token counts (the caller decides: real tokens, or targets).

    Returns:
        (total, per_pair): total is the mean over pairs of each pair's sum over counted tokens, a float32
        (or wider) scalar carrying gradients to the student and the projections; per_pair maps "s3_t9" to
        that pair's detached sum. Divide by the token count, as for the logits loss. The teacher's states
        are detached.
    """
    if len(pairs) == 0:
        raise ValueError("hidden_state_loss needs at least one (student_layer, teacher_layer) pair")
    metric_fn = get_metric(metric)
    mask = mask.bool()
    per_pair: dict[str, torch.Tensor] = {}
    total: torch.Tensor | None = None
    for s, t in pairs:
        student = _layer(student_hidden_states, s, "student")
        teacher = _layer(teacher_hidden_states, t, "teacher").detach()
        if student.shape[:2] != mask.shape or teacher.shape[:2] != mask.shape:
            raise ValueError(
                f"pair [{s}, {t}]: hidden states {tuple(student.shape)} (student) and {tuple(teacher.shape)} "
                f"(teacher) do not match the mask {tuple(mask.shape)} in [batch, seq]"
            )
        # Select before projecting and upcasting: padding and prompt rows never cost a matmul.
        dtype = torch.promote_types(student.dtype, torch.float32)
        key = pair_key(s, t)
        projected = projections(key, student[mask].to(dtype)).to(dtype)  # [N, d_t]
        pair_sum = metric_fn(projected, teacher[mask].to(dtype)).sum()
        per_pair[key] = pair_sum.detach()
        total = pair_sum if total is None else total + pair_sum
    return total / len(pairs), per_pair
