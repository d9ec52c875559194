"""Cross-tokenizer loss terms (ULD, GOLD-style byte-aligned matching), pure tensor functions.

Teacher and student tokenize the same text differently; `lmdistill.xtok.align` groups their tokens
into spans that end on the same byte. For a group whose tokens are x_a .. x_{b-1} on one side, the
model's MERGED log-probabilities over its vocabulary are

    log m(v) = log p(v | x_<a) + sum_{j=a+1}^{b-1} log p(x_j | x_<j)

that is, the first position's distribution times the probabilities of the actual later tokens of
the group (GOLD; field guide section 9). m(x_a) is then the probability of the group's whole token
sequence; m sums to the product of the later tokens' probabilities (1 for a one-token group). All
softmaxes are at the temperature T.

Per group, with p the teacher's merged vector and q the student's:

- ULD ("uld"): sorted_l1(p, q) = sum_i |sort(p)_i - sort(q)_i|, both sorted descending and the
  shorter vocabulary zero-padded (Boizard et al. 2024: Wasserstein-1 under a uniform cost). It needs
  no shared tokens and ignores which token is which.
- Byte-aligned matching ("gold"): K token pairs stand for the same bytes in both vocabularies
  (`lmdistill.xtok.vocab.shared_token_ids`). Per group

      matched_weight * s * D(p_K, q_K) + unmatched_weight * sorted_l1(p with K zeroed, q with K zeroed)

  where D is any of the six divergences of `lmdistill.losses` applied to the merged vectors restricted
  to the K shared tokens and renormalised (the divergence's own log-softmax renormalises), and
  s = (teacher mass on K) / (teacher's total merged mass), detached, in [0, 1]: the matched term
  counts as much as the teacher's probability it covers, so a group whose teacher mass sits on
  unshared tokens does not push the student towards a renormalised sliver. The unmatched term
  is on the un-renormalised merged values, so it is already at most 2 (1 - share) in size.
  Defaults: both weights 1.

Memory: the teacher's vocabulary may be 262,144 (Gemma 3; ~1 MB per position in fp32). `xtok_loss`
never builds logits for all positions: it runs the heads on hidden states a chunk of groups at a
time, computes the chunk's loss and its gradients for the student's hidden states and head at once
(as `lmdistill.chunked` does), and keeps only those gradients. `xtok_loss_reference` is the plain
all-at-once version, for tests and the memory benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdistill.chunked import Head
from lmdistill.losses import LOSSES, divergence
from lmdistill.xtok.align import Alignment

METHODS = ("uld", "gold")


# --- pure per-row terms --------------------------------------------------------------------------------


def sorted_l1(p_t: torch.Tensor, p_s: torch.Tensor) -> torch.Tensor:
    """sum_i |sort(p_t)_i - sort(p_s)_i|, descending sorts, shorter side zero-padded: [..., Vt], [..., Vs] -> [...]."""
    a = p_t.sort(dim=-1, descending=True).values
    b = p_s.sort(dim=-1, descending=True).values
    m = min(a.shape[-1], b.shape[-1])
    # Padding with zeros puts them after every (non-negative) entry: the longer side's tail meets zeros.
    return (a[..., :m] - b[..., :m]).abs().sum(-1) + a[..., m:].sum(-1) + b[..., m:].sum(-1)


def uld(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """ULD per position: sorted_l1(softmax(teacher / T), softmax(student / T)); [..., Vs], [..., Vt] -> [...].

    Float32 or wider (float64 stays float64). No T^2 factor (as in `lmdistill.losses`).
    """
    dtype = torch.promote_types(
        torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32
    )
    p_t = torch.softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    p_s = torch.softmax(student_logits.to(dtype) / temperature, dim=-1)
    return sorted_l1(p_t, p_s)


def merged_log_probs(
    first_logits: torch.Tensor, later_log_prob: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """log_softmax(first_logits / T) + later_log_prob[:, None]: [G, V], [G] -> [G, V] (see module docstring)."""
    dtype = torch.promote_types(first_logits.dtype, torch.float32)
    return torch.log_softmax(first_logits.to(dtype) / temperature, dim=-1) + later_log_prob.to(dtype)[:, None]


def group_terms(
    s_merged: torch.Tensor,
    t_merged: torch.Tensor,
    spec: XtokSpec,
    shared_s: torch.Tensor | None = None,
    shared_t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(matched, unmatched) per group from merged log-probs [G, Vs], [G, Vt]; matched is 0 for ULD.

    Both already weighted (matched_weight * share, unmatched_weight); their sum is the loss per group.
    """
    p_t, p_s = t_merged.exp(), s_merged.exp()
    if spec.method == "uld":
        return p_s.new_zeros(p_s.shape[0]), spec.unmatched_weight * sorted_l1(p_t, p_s)
    share = (p_t[:, shared_t].sum(-1) / p_t.sum(-1)).detach()
    matched = divergence(
        spec.loss,
        s_merged[:, shared_s],
        t_merged[:, shared_t],
        reduction="none",
        beta=spec.beta,
        alpha=spec.alpha,
    )
    unmatched = sorted_l1(p_t.index_fill(-1, shared_t, 0.0), p_s.index_fill(-1, shared_s, 0.0))
    return spec.matched_weight * share * matched, spec.unmatched_weight * unmatched


# --- settings and inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class XtokSpec:
    """What `xtok_loss` computes. method: "uld" or "gold"; loss: the divergence for gold's shared tokens.

    matched_weight, unmatched_weight: gold's two weights (module docstring); ULD's sorted-L1 term is
    weighted by unmatched_weight. The caller adds CE and its own factor (ULD's lambda) on top.
    chunk_size: positions per side (first + later positions of the groups) run through a head at once.
    """

    method: str = "gold"
    loss: str = "jsd"
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    matched_weight: float = 1.0
    unmatched_weight: float = 1.0
    chunk_size: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown cross-tokenizer method {self.method!r}; choose one of: {', '.join(METHODS)}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")
        if not (self.temperature > 0) or self.chunk_size < 1:
            raise ValueError("temperature must be > 0 and chunk_size >= 1")


@dataclass(frozen=True)
class Side:
    """One model's view of a sequence: hidden [L, H] final hidden states at every position, its head,
    ids [L] the sequence's token ids, groups [G, 2] int64 token ranges [start, end) (start >= 1: the
    group's first token is predicted from position start - 1), vocab: logits are sliced to this many rows.
    """

    hidden: torch.Tensor
    head: Head
    ids: torch.Tensor
    groups: torch.Tensor
    vocab: int


def group_tensors(alignment: Alignment) -> tuple[torch.Tensor, torch.Tensor]:
    """(groups_a, groups_b) int64 [G, 2] of the groups both models can predict: a group starting at
    token 0 on either side has no earlier position to predict it from and is left out (prepend BOS)."""
    keep = [
        (a, b) for a, b in zip(alignment.groups_a, alignment.groups_b, strict=True) if a[0] >= 1 and b[0] >= 1
    ]
    ga = torch.tensor([a for a, _ in keep], dtype=torch.long).reshape(-1, 2)
    gb = torch.tensor([b for _, b in keep], dtype=torch.long).reshape(-1, 2)
    return ga, gb


@dataclass(frozen=True)
class _Plan:
    """Positions to run through a head for groups [g0, g1): first [c], later [m], later targets [m], later group [m]."""

    first: torch.Tensor
    later: torch.Tensor
    later_ids: torch.Tensor
    later_group: torch.Tensor


def _plan(side: Side, g0: int, g1: int) -> _Plan:
    groups = side.groups[g0:g1]
    starts, ends = groups[:, 0], groups[:, 1]
    n_later = ends - starts - 1
    later_group = torch.repeat_interleave(torch.arange(len(groups), device=groups.device), n_later)
    offset = torch.arange(int(n_later.sum()), device=groups.device) - torch.repeat_interleave(
        torch.cumsum(n_later, 0) - n_later, n_later
    )
    later = starts[later_group] + offset  # positions start .. end-2 predict tokens start+1 .. end-1
    return _Plan(starts - 1, later, side.ids[later + 1], later_group)


def _chunks(s: Side, t: Side, chunk_size: int) -> list[tuple[int, int]]:
    """Consecutive group ranges whose positions on each side fit in chunk_size (at least one group)."""
    cost = torch.maximum(s.groups[:, 1] - s.groups[:, 0], t.groups[:, 1] - t.groups[:, 0]).tolist()
    out, start, used = [], 0, 0
    for g, c in enumerate(cost):
        if used and used + c > chunk_size:
            out.append((start, g))
            start, used = g, 0
        used += c
    if used:
        out.append((start, len(cost)))
    return out


def head_logits(head: Head, hidden: torch.Tensor, vocab: int, weight=None, bias=None) -> torch.Tensor:
    """`Head.logits` (softcap included) in float32 or wider: float64 stays float64, for gradcheck."""
    if head.module is not None or hidden.dtype != torch.float64:
        return head.logits(hidden, vocab, weight=weight, bias=bias)
    w = (head.weight if weight is None else weight)[:vocab]
    b = head.bias if bias is None else bias
    out = torch.nn.functional.linear(hidden, w, None if b is None else b[:vocab])
    return out if not head.softcap else head.softcap * torch.tanh(out / head.softcap)


def _merged(side: Side, plan: _Plan, hidden: torch.Tensor, temperature: float, weight=None, bias=None):
    """Merged log-probs [c, V] from the rows of `hidden` = side.hidden[cat(first, later)]."""
    c = len(plan.first)
    logits = head_logits(side.head, hidden, side.vocab, weight=weight, bias=bias)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    later_logits = logits[c:].to(dtype) / temperature
    later_lp = later_logits.gather(1, plan.later_ids[:, None])[:, 0] - torch.logsumexp(later_logits, dim=-1)
    later_sum = later_lp.new_zeros(c).index_add(0, plan.later_group, later_lp)
    return merged_log_probs(logits[:c], later_sum, temperature=temperature)


def _check(s: Side, t: Side, spec: XtokSpec, shared, weights) -> None:
    if s.groups.shape != t.groups.shape or s.groups.dim() != 2 or s.groups.shape[1] != 2:
        raise ValueError(
            f"groups must be [G, 2] on both sides, got {tuple(s.groups.shape)} and {tuple(t.groups.shape)}"
        )
    for name, side in (("student", s), ("teacher", t)):
        if len(side.groups) and (
            int(side.groups[:, 0].min()) < 1 or int(side.groups[:, 1].max()) > len(side.ids)
        ):
            raise ValueError(
                f"{name} groups must lie in tokens [1, {len(side.ids)}]: token 0 has no prediction"
            )
        if len(side.groups) and bool((side.groups[:, 1] <= side.groups[:, 0]).any()):
            raise ValueError(f"{name} groups must be non-empty ranges [start, end)")
    if spec.method == "gold" and shared is None:
        raise ValueError("method 'gold' needs the shared token ids (lmdistill.xtok.vocab.shared_token_ids)")
    if weights is not None and weights.shape != (len(s.groups),):
        raise ValueError(f"weights must have shape [{len(s.groups)}] (one per group)")


@dataclass
class XtokSums:
    """Sums over groups: `total` carries the gradient; `matched`, `unmatched` are detached parts of it."""

    total: torch.Tensor
    matched: torch.Tensor
    unmatched: torch.Tensor
    groups: int


class _ChunkedXtok(torch.autograd.Function):
    """Forward computes the loss and its gradients chunk by chunk; backward only scales them."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, s, t, spec, shared, weights):
        grad_h = torch.zeros_like(s_hidden) if ctx.needs_input_grad[0] else None
        grad_w = (
            torch.zeros(s_weight.shape, dtype=torch.float32, device=s_weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        grad_b = None
        if s_bias is not None and ctx.needs_input_grad[2]:
            grad_b = torch.zeros(s_bias.shape, dtype=torch.float32, device=s_bias.device)
        w = s_weight.detach().requires_grad_(ctx.needs_input_grad[1])
        b = None if s_bias is None else s_bias.detach().requires_grad_(ctx.needs_input_grad[2])
        sums = _sum_over_chunks(s, t, spec, shared, weights, grads=(grad_h, grad_w, grad_b, w, b))
        ctx.save_for_backward(
            grad_h,
            None if grad_w is None else grad_w.to(s_weight.dtype),
            None if grad_b is None else grad_b.to(s_bias.dtype),
        )
        ctx.mark_non_differentiable(sums[1], sums[2])
        return sums

    @staticmethod
    def backward(ctx, g_total, _g_matched, _g_unmatched):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = lambda g: None if g is None else g * g_total.to(g.dtype)  # noqa: E731
        return scale(grad_h), scale(grad_w), scale(grad_b), None, None, None, None, None


def _sum_over_chunks(s: Side, t: Side, spec: XtokSpec, shared, weights, grads=None):
    """(total, matched, unmatched) sums; with `grads`, accumulates the student's gradients chunk by chunk."""
    zero = s.hidden.new_zeros((), dtype=torch.promote_types(s.hidden.dtype, torch.float32))
    total, matched_sum, unmatched_sum = zero.clone(), zero.clone(), zero.clone()
    shared_s, shared_t = (None, None) if shared is None else shared
    for g0, g1 in _chunks(s, t, spec.chunk_size):
        tp, sp = _plan(t, g0, g1), _plan(s, g0, g1)
        with torch.no_grad():
            t_rows = t.hidden[torch.cat([tp.first, tp.later])]
            t_merged = _merged(t, tp, t_rows, spec.temperature)
        s_index = torch.cat([sp.first, sp.later])
        h = s.hidden[s_index].detach()
        wanted = grads is not None and grads[0] is not None
        h.requires_grad_(wanted)
        with torch.enable_grad() if grads is not None else torch.no_grad():
            w, b = (grads[3], grads[4]) if grads is not None else (None, None)
            s_merged = _merged(s, sp, h, spec.temperature, weight=w, bias=b)
            matched, unmatched = group_terms(s_merged, t_merged, spec, shared_s, shared_t)
            if weights is not None:
                matched, unmatched = matched * weights[g0:g1], unmatched * weights[g0:g1]
            chunk_total = matched.sum() + unmatched.sum()
        if grads is not None:
            grad_h, grad_w, grad_b, w, b = grads
            inputs = [(x, i) for i, x in enumerate((h, w, b)) if x is not None and x.requires_grad]
            if inputs and chunk_total.requires_grad:
                got = torch.autograd.grad(chunk_total, [x for x, _ in inputs])
                for g, (_, i) in zip(got, inputs, strict=True):
                    if i == 0:
                        grad_h.index_add_(0, s_index, g.to(grad_h.dtype))
                    elif i == 1:
                        grad_w += g
                    else:
                        grad_b += g
        total += chunk_total.detach()
        matched_sum += matched.detach().sum()
        unmatched_sum += unmatched.detach().sum()
    return total, matched_sum, unmatched_sum


def xtok_loss(
    student: Side,
    teacher: Side,
    spec: XtokSpec,
    *,
    shared: tuple[torch.Tensor, torch.Tensor] | None = None,
    weights: torch.Tensor | None = None,
) -> XtokSums:
    """The cross-tokenizer loss summed over the aligned groups, computed through both heads in chunks.

    student/teacher: `Side`s whose groups correspond row by row (group g covers the same bytes on both).
    shared: (student ids [K], teacher ids [K]) of tokens both vocabularies have, needed for "gold".
    weights: [G] per-group factors (e.g. 0 for prompt groups), or None. The teacher gets no gradient.
    Peak memory holds one chunk of logits of each model, never [positions, vocab] of all positions.
    """
    _check(student, teacher, spec, shared, weights)
    teacher = Side(teacher.hidden.detach(), teacher.head, teacher.ids, teacher.groups, teacher.vocab)
    weights = None if weights is None else weights.detach()
    s_weight = student.head.weight
    needs_grad = torch.is_grad_enabled() and (
        student.hidden.requires_grad or (s_weight is not None and s_weight.requires_grad)
    )
    n = len(student.groups)
    if needs_grad:
        total, matched, unmatched = _ChunkedXtok.apply(
            student.hidden, s_weight, student.head.bias, student, teacher, spec, shared, weights
        )
    else:
        total, matched, unmatched = _sum_over_chunks(student, teacher, spec, shared, weights)
    return XtokSums(total, matched, unmatched, n)


def xtok_loss_reference(
    student: Side,
    teacher: Side,
    spec: XtokSpec,
    *,
    shared: tuple[torch.Tensor, torch.Tensor] | None = None,
    weights: torch.Tensor | None = None,
) -> XtokSums:
    """Same value as `xtok_loss`, computed plainly: logits of every position at once, autograd throughout."""
    _check(student, teacher, spec, shared, weights)
    merged = []
    for side, grad in ((student, True), (teacher, False)):
        with torch.enable_grad() if grad else torch.no_grad():
            logits = head_logits(side.head, side.hidden if grad else side.hidden.detach(), side.vocab)
            logp = torch.log_softmax(
                logits.to(torch.promote_types(logits.dtype, torch.float32)) / spec.temperature, -1
            )
            token_lp = torch.cat([logp[:-1].gather(1, side.ids[1:, None])[:, 0], logp.new_zeros(1)])
            rows = []
            for start, end in side.groups.tolist():
                rows.append(logp[start - 1] + token_lp[start : end - 1].sum())  # token_lp[j] = log p(x_{j+1})
            merged.append(torch.stack(rows) if rows else logp[:0])
    shared_s, shared_t = (None, None) if shared is None else shared
    matched, unmatched = group_terms(merged[0], merged[1], spec, shared_s, shared_t)
    if weights is not None:
        matched, unmatched = matched * weights, unmatched * weights
    return XtokSums(
        matched.sum() + unmatched.sum(), matched.sum().detach(), unmatched.sum().detach(), len(student.groups)
    )
