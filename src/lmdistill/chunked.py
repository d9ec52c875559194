"""CE + KD through the output heads in token chunks: no [tokens, vocab] logits of either model is kept.

The student's final hidden states go through its head a chunk of tokens at a time; the chunk's
CE and divergence are computed and differentiated at once (the gradients for the hidden states and the
head are accumulated in the forward pass, as Liger-Kernel does), so peak memory holds one chunk of
logits instead of all of them, and backward costs nothing extra. Only counted target positions are
passed in, so prompt and padding tokens never reach the head.

All sums are over tokens; the trainer divides by the number of target tokens in the optimizer step.
Optional per-token `weights` [N] multiply both the CE and the KD term of each token (the sums are
still divided by the plain token count): a weight of 0 removes a token from the numerator.

Sparse teacher (offline top-k, `lmdistill capture`): instead of teacher hidden states, a
`SparseTeacher` gives, per target token, the teacher's k most likely token ids, their log-probs at
temperature T, and the log of the remaining mass (the "tail"). The KD term is then the SAME divergence
(`lmdistill.losses.divergence`) applied to both distributions coarsened to k + 1 buckets: the k
teacher tokens, then one "everything else" bucket. Per chunk, the student's log-softmax at T over the
vocabulary is gathered at the k ids, and its own rest bucket log(1 - sum_k q_i) is computed as the
logsumexp of the logits outside the k ids (minus the full logsumexp), which is exact with no
cancellation, then clamped from below at `TAIL_FLOOR` (clamped entries send no gradient, so gradients
stay finite when the k tokens hold all the mass). Both (k+1)-vectors are normalised log-probs; they
are passed to the divergence as logits at temperature 1, where log_softmax is the identity up to
rounding. For forward KL this coarsened divergence is a lower bound of the full-vocabulary one (the
data-processing inequality: merging outcomes never increases a KL or any f-divergence, TVD included);
with k = V it equals it. CE on the labels is unchanged (full vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmdistill.losses import divergence

#: Smallest log-mass of a rest/tail bucket (about 1e-30): both sides are clamped here, so a top-k that
#: holds all the mass gives two equal, negligible buckets instead of log 0.
TAIL_FLOOR = -69.0


@dataclass(frozen=True)
class Head:
    """An output head: logits = softcap(hidden @ weight[:vocab].T + bias[:vocab]).

    weight: [head_rows, hidden]; bias: [head_rows] or None; softcap: Gemma-style final logit
    soft-capping (cap * tanh(logits / cap)) or None. `module`: for a head that is not a plain
    Linear (an int8-quantised one, say), the module itself; such a head is only ever run forward
    (teachers, evaluation), never differentiated through.
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None = None
    softcap: float | None = None
    module: torch.nn.Module | None = None

    @classmethod
    def of(cls, model: torch.nn.Module, *, trainable: bool = True) -> Head:
        """The head of a Hugging Face causal LM (`get_output_embeddings()`).

        trainable: the student's head, which the chunked loss differentiates by its weight, so it
        must be a plain Linear; False accepts any head module (forward only).
        """
        from lmdistill.errors import UserError

        head = model.get_output_embeddings()
        cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        if not isinstance(head, torch.nn.Linear):
            if not trainable and isinstance(head, torch.nn.Module):
                return cls(None, None, cap, module=head)
            raise UserError(
                f"the output head is a {type(head).__name__}, not a plain Linear; chunked KD reads its "
                "weight directly (do not put LoRA adapters on lm_head)"
            )
        weight = head.weight
        if type(weight).__name__ == "DTensor":  # FSDP2: gather the head's unit (lmdistill.models.sharding)
            from lmdistill.models.sharding import unsharded_head_weight

            weight = unsharded_head_weight(model, head)
        if weight.numel() == 0 or weight.dim() != 2:
            raise UserError(
                "the output head's weight is sharded outside FSDP2 (FSDP1 or DeepSpeed ZeRO-3); chunked KD "
                "reads it whole: use train.fsdp (FSDP2), DDP or ZeRO-1/2"
            )
        return cls(weight, head.bias, cap)

    def logits(self, hidden: torch.Tensor, vocab: int, weight=None, bias=None) -> torch.Tensor:
        """[n, hidden] -> float32 [n, vocab]."""
        if self.module is not None:
            out = self.module(hidden)[..., :vocab].float()
        else:
            w = (self.weight if weight is None else weight)[:vocab]
            b = self.bias if bias is None else bias
            out = F.linear(hidden, w, None if b is None else b[:vocab]).float()
        if self.softcap:
            out = self.softcap * torch.tanh(out / self.softcap)
        return out


@dataclass(frozen=True)
class LossSpec:
    """What to compute per token: ce_weight * CE + kd_weight * D(teacher, student at temperature).

    kd_weight already includes Hinton's T^2 (the losses module returns the plain divergence).
    """

    loss: str = "forward_kl"
    ce_weight: float = 0.5
    kd_weight: float = 0.5
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    vocab: int | None = None
    chunk_size: int = 256

    @classmethod
    def from_config(cls, distill, vocab: int | None) -> LossSpec:
        """From a `DistillConfig`: CE weight 1 - kd_ratio, KD weight kd_ratio * T^2."""
        return cls(
            loss=distill.loss,
            ce_weight=1.0 - distill.kd_ratio,
            kd_weight=distill.kd_ratio * distill.temperature**2,
            temperature=distill.temperature,
            beta=distill.beta,
            alpha=distill.alpha,
            vocab=vocab,
            chunk_size=distill.chunk_size,
        )


@dataclass(frozen=True)
class SparseTeacher:
    """The teacher's top-k knowledge per target token (see the module docstring).

    ids: int64 [N, k] token ids < vocab; logprobs: float32 [N, k] log-probs at the loss temperature;
    tail: float32 [N] log of the mass outside the k ids (floored at `TAIL_FLOOR`).
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor

    def __getitem__(self, rows: slice) -> SparseTeacher:
        return SparseTeacher(self.ids[rows], self.logprobs[rows], self.tail[rows])

    def buckets(self) -> torch.Tensor:
        """[N, k + 1] float32 log-probs: the k tokens, then the tail."""
        tail = self.tail.float().clamp(min=TAIL_FLOOR)
        return torch.cat([self.logprobs.float(), tail[:, None]], dim=1)


def student_buckets(s_logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """[n, V] student logits -> [n, k + 1] log-probs at `temperature` of the k `ids` [n, k] and the rest.

    The rest is logsumexp over the logits outside `ids` (exact, no 1 - sum cancellation), floored at
    TAIL_FLOOR. Scattering a finite minimum rather than -inf keeps the logsumexp's gradient finite when
    the k ids cover the whole vocabulary.
    """
    z = s_logits / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # [n, 1]
    top = z.gather(1, ids) - lse  # [n, k]
    outside = z.scatter(1, ids, torch.finfo(z.dtype).min)
    rest = (torch.logsumexp(outside, dim=-1, keepdim=True) - lse).clamp(min=TAIL_FLOOR)  # [n, 1]
    return torch.cat([top, rest], dim=1)


@dataclass
class LossSums:
    """Sums over the target tokens (scalars): `total` carries the gradient; `ce` and `kd` are detached."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    tokens: int


def _chunk_terms(spec, s_logits, labels, t_logits, t_sparse=None, weights=None):
    """Float32 sums over one chunk: (ce, kd); kd is 0 without a teacher. weights: [n] or None."""
    # CE is computed even at weight 0: it is logged, and costs one logsumexp per chunk.
    reduction = "sum" if weights is None else "none"
    ce = F.cross_entropy(s_logits, labels, reduction=reduction)
    if t_sparse is not None:  # k + 1 buckets, already at the temperature (see module docstring)
        s_in, t_in, temperature = (
            student_buckets(s_logits, t_sparse.ids, spec.temperature),
            t_sparse.buckets(),
            1.0,
        )
    elif t_logits is not None:
        s_in, t_in, temperature = s_logits, t_logits, spec.temperature
    else:
        return (ce if weights is None else (ce * weights).sum()), s_logits.new_zeros(())
    kd = divergence(
        spec.loss, s_in, t_in, temperature=temperature, reduction=reduction, beta=spec.beta, alpha=spec.alpha
    )
    if weights is not None:
        ce, kd = (ce * weights).sum(), (kd * weights).sum()
    return ce, kd


def _vocab(spec, s_head):
    return spec.vocab or s_head.weight.shape[0]  # the student's head is always a plain Linear


def _chunks(
    spec,
    s_hidden,
    s_head,
    labels,
    t_hidden,
    t_head,
    t_sparse,
    weights,
    *,
    chunk_size,
    weight=None,
    bias=None,
    leaf_hidden=False,
):
    """The one chunk loop: yields (rows, h, ce, kd) per chunk of `chunk_size` target rows.

    Teacher logits are computed without grad; the student's carry autograd when grad is enabled, from
    `h` (the chunk's hidden states, made a fresh leaf with `leaf_hidden`) and the head's
    `weight`/`bias` (defaults: the head's own). ce and kd are float32 sums over the chunk.
    """
    vocab = _vocab(spec, s_head)
    for start in range(0, s_hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        t_logits = None
        if t_hidden is not None:
            with torch.no_grad():
                t_logits = t_head.logits(t_hidden[rows], vocab)
        h = s_hidden[rows].detach().requires_grad_(True) if leaf_hidden else s_hidden[rows]
        ce, kd = _chunk_terms(
            spec,
            s_head.logits(h, vocab, weight=weight, bias=bias),
            labels[rows],
            t_logits,
            None if t_sparse is None else t_sparse[rows],
            None if weights is None else weights[rows],
        )
        yield rows, h, ce, kd


def _summed(spec, s_hidden, s_head, labels, t_hidden, t_head, t_sparse, weights, *, chunk_size) -> LossSums:
    """`_chunks` summed, with autograd through the student where grad is enabled."""
    ce_sum = kd_sum = s_hidden.new_zeros((), dtype=torch.float32)
    chunks = _chunks(
        spec, s_hidden, s_head, labels, t_hidden, t_head, t_sparse, weights, chunk_size=chunk_size
    )
    for _, _, ce, kd in chunks:
        ce_sum, kd_sum = ce_sum + ce, kd_sum + kd
    total = spec.ce_weight * ce_sum + spec.kd_weight * kd_sum
    return LossSums(total, ce_sum.detach(), kd_sum.detach(), s_hidden.shape[0])


class _ChunkedLoss(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward only scales them."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, labels, t_hidden, spec, s_head, t_head, t_sparse, weights):
        grad_h = torch.zeros_like(s_hidden) if ctx.needs_input_grad[0] else None
        # Accumulate head gradients in fp32 whatever the weight dtype: many small chunk sums.
        grad_w = grad_b = None  # only for a trainable head (not a frozen one under LoRA)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(s_weight.shape, dtype=torch.float32, device=s_weight.device)
        if s_bias is not None and ctx.needs_input_grad[2]:
            grad_b = torch.zeros(s_bias.shape, dtype=torch.float32, device=s_bias.device)
        ce_sum = s_hidden.new_zeros((), dtype=torch.float32)
        kd_sum = ce_sum.clone()
        total_sum = ce_sum.clone()
        if _has_closed_form(spec, s_head, t_sparse):
            vocab = _vocab(spec, s_head)
            for start in range(0, s_hidden.shape[0], spec.chunk_size):
                rows = slice(start, start + spec.chunk_size)
                h = s_hidden[rows].detach()
                t_logits = None
                if t_hidden is not None:
                    with torch.no_grad():
                        t_logits = t_head.logits(t_hidden[rows], vocab)
                with torch.no_grad():
                    z = s_head.logits(
                        h, vocab, weight=s_weight.detach(), bias=None if s_bias is None else s_bias.detach()
                    )
                    ce, kd, g = _closed_form_chunk(
                        spec, z, labels[rows], t_logits, None if weights is None else weights[rows]
                    )
                    if grad_h is not None:
                        grad_h[rows] = g.to(s_weight.dtype) @ s_weight.detach()[:vocab]
                    if grad_w is not None:
                        # in the head's dtype, as autograd would (bf16 matmuls on a GPU), summed in fp32
                        grad_w[:vocab] += (g.to(s_weight.dtype).t() @ h.to(s_weight.dtype)).float()
                    if grad_b is not None:
                        grad_b[:vocab] += g.sum(0)
                ce_sum += ce
                kd_sum += kd
                total_sum += spec.ce_weight * ce + spec.kd_weight * kd
        else:
            _autograd_chunks(ctx, spec, s_hidden, s_head, labels, t_hidden, t_head, t_sparse, weights, s_weight, s_bias,
                             grad_h, grad_w, grad_b, ce_sum, kd_sum, total_sum)  # fmt: skip
        ctx.save_for_backward(
            grad_h,
            None if grad_w is None else grad_w.to(s_weight.dtype),
            None if grad_b is None else grad_b.to(s_bias.dtype),
        )
        ctx.mark_non_differentiable(ce_sum, kd_sum)
        return total_sum, ce_sum, kd_sum

    @staticmethod
    def backward(ctx, g_total, _g_ce, _g_kd):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = lambda g: None if g is None else g * g_total.to(g.dtype)  # noqa: E731
        return scale(grad_h), scale(grad_w), scale(grad_b), *([None] * 7)


def _autograd_chunks(ctx, spec, s_hidden, s_head, labels, t_hidden, t_head, t_sparse, weights, s_weight, s_bias,
                     grad_h, grad_w, grad_b, ce_sum, kd_sum, total_sum) -> None:  # fmt: skip
    """The general chunk loop: each chunk's loss differentiated by autograd; gradients and sums are
    accumulated in place into grad_h/grad_w/grad_b and ce_sum/kd_sum/total_sum."""
    w = s_weight.detach().requires_grad_(ctx.needs_input_grad[1])
    b = None if s_bias is None else s_bias.detach().requires_grad_(ctx.needs_input_grad[2])
    with torch.enable_grad():
        chunks = _chunks(
            spec, s_hidden.detach(), s_head, labels, t_hidden, t_head, t_sparse, weights,
            chunk_size=spec.chunk_size, weight=w, bias=b, leaf_hidden=ctx.needs_input_grad[0],
        )  # fmt: skip
        for rows, h, ce, kd in chunks:
            total = spec.ce_weight * ce + spec.kd_weight * kd
            wanted = [(x, i) for x, i in ((h, 0), (w, 1), (b, 2)) if x is not None and x.requires_grad]
            if wanted:
                grads = torch.autograd.grad(total, [x for x, _ in wanted])
                for g, (_, i) in zip(grads, wanted, strict=True):
                    if i == 0:
                        grad_h[rows] = g
                    elif i == 1:
                        grad_w += g
                    else:
                        grad_b += g
            ce_sum += ce.detach()
            kd_sum += kd.detach()
            total_sum += total.detach()


def _has_closed_form(spec, s_head: Head, t_sparse) -> bool:
    """Whether one chunk's gradient has the closed form of `_closed_form_chunk`: CE plus forward KL
    against a dense teacher (or CE alone), through a plain head without soft-capping."""
    kd_ok = spec.loss == "forward_kl" or spec.kd_weight == 0.0
    return kd_ok and t_sparse is None and s_head.module is None and not s_head.softcap


def _closed_form_chunk(spec, z, labels, t_logits, weights):
    """CE + forward KL of one chunk and their gradient with respect to the logits, with no autograd graph.

    z: float32 [n, V] student logits; labels [n]; t_logits: float32 [n, V] or None (CE only);
    weights: [n] or None. Returns (ce, kd, g): float32 sums over the chunk and g = d(ce_weight * ce
    + kd_weight * kd) / dz [n, V], from
        d CE / dz = softmax(z) - onehot(label),  d KL(p_t || softmax(z/T)) / dz = (softmax(z/T) - p_t) / T.
    Fewer passes over [n, V] than autograd through the generic divergence (Liger-Kernel's point): the
    same values and gradients to float32 rounding (tests/test_chunked.py checks it against autograd).
    Both heads are plain Linears here (`_has_closed_form`), so the logits are finite; unlike the generic
    divergence, this form does not guard -inf teacher logits.
    """
    w = None if weights is None else weights[:, None]
    c = spec.ce_weight if w is None else spec.ce_weight * w
    lse = torch.logsumexp(z, dim=-1)
    ce_rows = lse - z.gather(1, labels[:, None]).squeeze(1)
    g = torch.softmax(z, dim=-1)
    kd_rows = None
    if t_logits is None or spec.kd_weight == 0.0:
        g.mul_(c)
    else:
        temp = spec.temperature
        k = spec.kd_weight / temp if w is None else (spec.kd_weight / temp) * w
        lpt = torch.log_softmax(t_logits if temp == 1.0 else t_logits / temp, dim=-1)
        pt = lpt.exp()
        if temp == 1.0:
            zs, lse_s, s_soft = z, lse, None
        else:
            zs = z / temp
            lse_s = torch.logsumexp(zs, dim=-1)
            s_soft = torch.softmax(zs, dim=-1)
        # KL(p_t || q) = sum p_t (log p_t - z/T) + logsumexp(z/T), since p_t sums to 1
        kd_rows = lpt.sub_(zs).mul_(pt).sum(dim=-1) + lse_s
        if s_soft is None:
            g.mul_(c + k).sub_(pt.mul_(k))
        else:
            g.mul_(c).add_(s_soft.sub_(pt).mul_(k))
    rows = torch.arange(z.shape[0], device=z.device)
    g[rows, labels] -= c if w is None else c.squeeze(1)
    if weights is not None:
        ce_rows = ce_rows * weights
        kd_rows = None if kd_rows is None else kd_rows * weights
    kd = z.new_zeros(()) if kd_rows is None else kd_rows.sum()
    return ce_rows.sum(), kd, g


def chunked_loss(
    s_hidden: torch.Tensor,
    s_head: Head,
    labels: torch.Tensor,
    spec: LossSpec,
    t_hidden: torch.Tensor | None = None,
    t_head: Head | None = None,
    *,
    t_sparse: SparseTeacher | None = None,
    weights: torch.Tensor | None = None,
) -> LossSums:
    """CE + KD summed over N target tokens, through the heads in chunks of `spec.chunk_size` tokens.

    s_hidden: [N, H_s] student final hidden states at the target positions (position t predicts labels[t]).
    labels: [N] token ids < vocab. t_hidden: [N, H_t] teacher hidden states at the same positions (no
    grad), or None; t_sparse: the teacher's stored top-k for the same N tokens instead (not both);
    neither gives CE only. weights: [N] per-token factors on CE and KD, or None for all ones. Logits
    are sliced to `spec.vocab` rows (the shared real vocabulary).
    """
    n = s_hidden.shape[0]
    t_hidden, t_sparse, weights = _check_inputs(n, spec, t_hidden, t_sparse, weights)
    needs_grad = torch.is_grad_enabled() and (s_hidden.requires_grad or s_head.weight.requires_grad)
    if needs_grad:
        total, ce, kd = _ChunkedLoss.apply(
            s_hidden, s_head.weight, s_head.bias, labels, t_hidden, spec, s_head, t_head, t_sparse, weights
        )
        return LossSums(total, ce, kd, n)
    with torch.no_grad():
        return _summed(
            spec, s_hidden, s_head, labels, t_hidden, t_head, t_sparse, weights, chunk_size=spec.chunk_size
        )


def _check_inputs(n, spec, t_hidden, t_sparse, weights):
    """Check the per-token inputs line up with the N student positions; drop the teacher at kd_weight 0."""
    if t_hidden is not None and t_sparse is not None:
        raise ValueError("give teacher hidden states or a sparse (top-k) teacher, not both")
    if t_hidden is not None and t_hidden.shape[0] != n:
        raise ValueError(f"student has {n} target positions, teacher {t_hidden.shape[0]}")
    if t_sparse is not None and not (t_sparse.ids.shape[0] == t_sparse.tail.shape[0] == n):
        raise ValueError(
            f"student has {n} target positions but the stored teacher top-k has {t_sparse.ids.shape[0]} rows: "
            "the teacher store and the tokenized data are out of step"
        )
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"weights must have shape [{n}] (one per target token), got {tuple(weights.shape)}")
    use_teacher = spec.kd_weight != 0.0
    t_hidden = t_hidden.detach() if use_teacher and t_hidden is not None else None
    t_sparse = t_sparse if use_teacher else None
    weights = None if weights is None else weights.detach().float()
    return t_hidden, t_sparse, weights


def full_logits_loss(
    s_hidden: torch.Tensor,
    s_head: Head,
    labels: torch.Tensor,
    spec: LossSpec,
    t_hidden: torch.Tensor | None = None,
    t_head: Head | None = None,
    *,
    t_sparse: SparseTeacher | None = None,
    weights: torch.Tensor | None = None,
) -> LossSums:
    """The plain reference: all logits at once (one chunk), autograd through everything. Same meaning
    as `chunked_loss`."""
    n = s_hidden.shape[0]
    t_hidden, t_sparse, weights = _check_inputs(n, spec, t_hidden, t_sparse, weights)
    return _summed(spec, s_hidden, s_head, labels, t_hidden, t_head, t_sparse, weights, chunk_size=max(n, 1))
