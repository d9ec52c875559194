"""Per-token distances H(F_t, phi(F_s)) between feature rows of the same width.

Every metric takes `student` and `teacher` rows [N, D] (the student already projected to the teacher's
width) and returns per-token values [N] in float32, or in the inputs' dtype where that is wider. The
caller reduces them with its own mask and token count, like the logits loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmdistill.errors import UserError

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Smallest norm used in the cosine denominator: a zero row gives similarity 0, not NaN.
COSINE_EPS = 1e-8


def _upcast(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if student.shape != teacher.shape:
        raise ValueError(
            f"hint metric needs rows of one shape, got student {tuple(student.shape)} and teacher "
            f"{tuple(teacher.shape)} (project the student to the teacher's width first)"
        )
    # bf16 squared differences summed over thousands of channels lose too much; float64 stays float64.
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    return student.to(dtype), teacher.to(dtype)


def mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over D of the squared difference: [N, D], [N, D] -> [N]."""
    student, teacher = _upcast(student, teacher)
    return (student - teacher).pow(2).mean(-1)


def cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity, in [0, 2]; scale-invariant per row: [N, D], [N, D] -> [N].

    A zero row has similarity 0 (value 1) with a finite gradient.
    """
    student, teacher = _upcast(student, teacher)
    return 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=COSINE_EPS)


def ln_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`mse` after a parameter-free layer norm of both rows over D: [N, D], [N, D] -> [N].

    Ignores each row's mean and scale, which vary wildly across layers and models (massive activations),
    so the hint compares the shape of the features rather than their magnitude.
    """
    student, teacher = _upcast(student, teacher)
    width = (student.shape[-1],)
    return mse(F.layer_norm(student, width), F.layer_norm(teacher, width))


HINT_METRICS: dict[str, Metric] = {"mse": mse, "cosine": cosine, "ln_mse": ln_mse}


def get_metric(name: str) -> Metric:
    """The metric registered under `name`; UserError listing the valid names otherwise."""
    try:
        return HINT_METRICS[name]
    except KeyError:
        raise UserError(
            f"hints.metric: unknown metric {name!r}; choose one of {', '.join(HINT_METRICS)}"
        ) from None
