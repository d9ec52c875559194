"""The loss against any teacher answer, routed ones included: `teacher_loss`.

One teacher (dense or sparse): exactly `chunked_loss(..., **scores.loss_inputs())`, the same call the
trainer always made. Routed (several teachers, each scoring its own rows): `chunked_loss` once per
part over that part's positions, summed. The losses are sums over tokens, so the routed sum is the
loss of every token against its own teacher; the trainer divides by the step's target tokens as ever.
"""

from __future__ import annotations

import dataclasses

import torch

from lmdistill.chunked import Head, LossSpec, LossSums, chunked_loss
from lmdistill.teachers.whitebox.source import TeacherScores


def teacher_loss(
    s_hidden: torch.Tensor,
    s_head: Head,
    labels: torch.Tensor,
    spec: LossSpec,
    scores: TeacherScores | None,
    weights: torch.Tensor | None = None,
) -> LossSums:
    """CE + KD summed over N target tokens against `scores` (None: CE only).

    s_hidden: [N, H_s] student final hidden states at the scored positions; labels: [N]; weights: [N]
    or None. A routed part at its own temperature T_i runs at T_i on both sides with kd_weight scaled
    to kd_ratio * T_i^2 (the run's T otherwise).
    """
    if scores is None or scores.parts is None:
        inputs = scores.loss_inputs() if scores is not None else {}
        return chunked_loss(s_hidden, s_head, labels, spec, **inputs, weights=weights)
    total = ce = kd = None
    tokens = 0
    for part in scores.parts:
        rows = part.tokens.to(s_hidden.device)
        if rows.numel() == 0:
            continue
        sums = chunked_loss(
            s_hidden[rows],
            s_head,
            labels[rows],
            part_spec(spec, part.temperature),
            **(part.scores.loss_inputs() if part.scores is not None else {}),
            weights=None if weights is None else weights[rows],
        )
        total = sums.total if total is None else total + sums.total
        ce = sums.ce if ce is None else ce + sums.ce
        kd = sums.kd if kd is None else kd + sums.kd
        tokens += sums.tokens
    if total is None:  # no scored position at all: the empty CE sum, with the student's graph
        return chunked_loss(s_hidden, s_head, labels, spec, weights=weights)
    return LossSums(total, ce, kd, tokens)


def part_spec(spec: LossSpec, temperature: float | None) -> LossSpec:
    """`spec` at a teacher's own temperature: T on both sides, kd_weight = kd_ratio * T^2."""
    if temperature is None or temperature == spec.temperature:
        return spec
    ratio = spec.kd_weight / spec.temperature**2
    return dataclasses.replace(spec, temperature=temperature, kd_weight=ratio * temperature**2)
