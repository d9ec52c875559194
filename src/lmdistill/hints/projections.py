"""phi: the learned maps that bring student features to the teacher's width, one per layer pair."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lmdistill.errors import UserError
from lmdistill.hints.mapping import PROJECTIONS, Widths, pair_key, width_of


class HintProjections(nn.Module):
    """One projection per (student_layer, teacher_layer) pair, held in a ModuleDict keyed "s3_t9".

    - equal widths: identity, no parameters (nothing to learn, nothing to save);
    - different widths and projection="linear": `nn.Linear(d_s, d_t, bias=False)`. For d_s <= d_t it
      starts as a truncated identity (weight[:d_s, :d_s] = I, the rest 0): a student whose weights were
      cut from the teacher's leading channels is then aligned from step 0. For d_s > d_t it keeps
      PyTorch's default init;
    - different widths and projection="none": UserError naming the pair.

    Args:
        pairs: (student_layer, teacher_layer) pairs, e.g. from `resolve_layer_map`.
        student_width, teacher_width: one width for every layer, or per-layer lists indexed by layer.
        projection: "linear" or "none".

    The parameters live apart from the student: train them with it, and save `state_dict()` on its own
    (safetensors works: every entry is a plain contiguous weight, keys "maps.s3_t9.weight").
    """

    def __init__(
        self,
        pairs: Sequence[tuple[int, int]],
        student_width: Widths,
        teacher_width: Widths,
        projection: str = "linear",
    ) -> None:
        super().__init__()
        if projection not in PROJECTIONS:
            raise UserError(
                f"hints.projection: unknown value {projection!r}; choose one of {', '.join(PROJECTIONS)}"
            )
        self.projection = projection
        self.pairs: list[tuple[int, int]] = [(int(s), int(t)) for s, t in pairs]
        self.keys: list[str] = [pair_key(s, t) for s, t in self.pairs]
        self.maps = nn.ModuleDict()
        for (s, t), key in zip(self.pairs, self.keys, strict=True):
            if key in self.maps:
                continue
            d_s, d_t = width_of(student_width, s), width_of(teacher_width, t)
            self.maps[key] = self._make(s, t, d_s, d_t)

    def _make(self, s: int, t: int, d_s: int, d_t: int) -> nn.Module:
        if d_s == d_t:
            return nn.Identity()
        if self.projection == "none":
            raise UserError(
                f"hints.projection is 'none' but pair [{s}, {t}] has different widths: student layer {s} "
                f"has {d_s} features, teacher layer {t} has {d_t}; use projection 'linear'"
            )
        linear = nn.Linear(d_s, d_t, bias=False)
        if d_s <= d_t:
            with torch.no_grad():
                linear.weight.zero_()
                linear.weight[:d_s, :d_s] = torch.eye(d_s)
        return linear

    def forward(self, pair: int | str, x: torch.Tensor) -> torch.Tensor:
        """Project student rows of a pair (its index in `pairs` or its key "s3_t9"): [..., d_s] -> [..., d_t].

        Rows are cast to the projection's dtype, so a float32 projection works on bf16 features.
        """
        key = self.keys[pair] if isinstance(pair, int) else pair
        module = self.maps[key]
        if isinstance(module, nn.Linear):
            x = x.to(module.weight.dtype)
        return module(x)

    def extra_repr(self) -> str:
        return f"projection={self.projection!r}, pairs={self.pairs}"
