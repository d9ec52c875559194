"""Divergences between teacher and student next-token distributions, for knowledge distillation.

Every loss compares p = softmax(teacher_logits / T) with q = softmax(student_logits / T) per token,
over the last (vocabulary) axis, then reduces over tokens:

===============  ==========================================  ==========================================
loss             per token                                   notes
===============  ==========================================  ==========================================
forward_kl       KL(p ‖ q) = Σ p (log p − log q)             mean-seeking, the classic distillation loss
reverse_kl       KL(q ‖ p) = Σ q (log q − log p)             mode-seeking (MiniLLM)
jsd              β KL(p ‖ m) + (1−β) KL(q ‖ m),              TRL GKD's generalized JSD, β weights the
                 m = β p + (1−β) q; beta=0.5, 0 < β < 1      teacher; at most log 2 at β = 0.5
skew_forward_kl  KL(p ‖ α p + (1−α) q); alpha=0.1 in [0, 1]  DistiLLM; forward_kl at α = 0, 0 at α = 1
skew_reverse_kl  KL(q ‖ (1−α) p + α q); alpha=0.1 in [0, 1]  DistiLLM; reverse_kl at α = 0, 0 at α = 1
tvd              ½ Σ |p − q|                                 in [0, 1], symmetric
===============  ==========================================  ==========================================

Each public function is generated (`_loss`) from its per-token core (`_forward_kl_tokens`, ...) and
the plumbing every loss shares: argument checks, log-softmax at T, masking and reduction. Common
arguments:

- ``student_logits``, ``teacher_logits``: [..., V], the same shape (e.g. [batch, seq, vocab]).
- ``temperature``: T > 0.
- ``mask``: bool [...] (the logits' shape without V; 0/1 integers work too), True = the token counts.
  None counts every token.
- ``reduction``: "mean" over counted tokens (0.0 when none counts), "sum" over counted tokens, or
  "none" for per-token values [...] with uncounted tokens set to 0.

The result is the plain divergence of the softened distributions: there is NO T² factor here. The
trainer multiplies by T² once, to keep gradient scale comparable across temperatures; applying it here
as well would apply it twice.

Arithmetic runs in float32, or in the inputs' dtype where that is wider ("float32 or wider": float64
keeps float64, which gradcheck needs). bf16/fp16 logits are upcast and give a float32 result.

-inf logits (vocabulary entries a model cannot emit, in either or both models) are supported: a term
whose outer distribution is 0 there contributes exactly 0, in value and in gradient. Where the inner
distribution is 0 but the outer is not, the divergence is truly infinite and the result is huge or inf
(reverse_kl when only the teacher masks an entry, say); the skewed losses with alpha > 0 and jsd stay
finite there, which is much of their point.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Literal, Protocol

import torch

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


# --- per-token cores: float32 (or wider) log-probs [..., V] -> values [...] ---------------------------


def _finite(logp: torch.Tensor) -> torch.Tensor:
    # -inf - (-inf) is NaN, so log-probs are clamped before any difference. Half the most negative float
    # leaves room to add a log-weight or subtract another clamped value without overflowing. clamp sends
    # no gradient to clamped entries, so autograd never multiplies a 0 by an inf.
    return logp.clamp(min=torch.finfo(logp.dtype).min / 2)


def _kl_tokens(logp_outer: torch.Tensor, logp_inner: torch.Tensor) -> torch.Tensor:
    """KL(outer ‖ inner) per token from log-probs: [..., V], [..., V] -> [...]."""
    # exp of the raw log-prob is exactly 0 where the outer is -inf, which zeroes that term and its gradient.
    return (logp_outer.exp() * (_finite(logp_outer) - _finite(logp_inner))).sum(-1)


def _log_mixture(logp_a: torch.Tensor, logp_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w·a + (1 - w)·b) computed in log space: [..., V], [..., V] -> [..., V]."""
    # A zero weight gives a -inf log-weight; the other argument is then finite (clamped), so logaddexp
    # always has a finite argument and a finite gradient, even where both log-probs are -inf.
    log_wa = math.log(weight_a) if weight_a > 0 else -math.inf
    log_wb = math.log1p(-weight_a) if weight_a < 1 else -math.inf
    return torch.logaddexp(_finite(logp_a) + log_wa, _finite(logp_b) + log_wb)


def _forward_kl_tokens(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    return _kl_tokens(logp_t, logp_s)


def _reverse_kl_tokens(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    return _kl_tokens(logp_s, logp_t)


def _jsd_tokens(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    log_m = _log_mixture(logp_t, logp_s, beta)
    return beta * _kl_tokens(logp_t, log_m) + (1 - beta) * _kl_tokens(logp_s, log_m)


def _skew_forward_kl_tokens(logp_s: torch.Tensor, logp_t: torch.Tensor, alpha: float) -> torch.Tensor:
    return _kl_tokens(logp_t, _log_mixture(logp_t, logp_s, alpha))


def _skew_reverse_kl_tokens(logp_s: torch.Tensor, logp_t: torch.Tensor, alpha: float) -> torch.Tensor:
    return _kl_tokens(logp_s, _log_mixture(logp_s, logp_t, alpha))


def _tvd_tokens(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    # abs has gradient 0 at p == q, and exp of -inf is 0 with gradient 0: finite everywhere.
    return 0.5 * (logp_t.exp() - logp_s.exp()).abs().sum(-1)


# --- shared plumbing -----------------------------------------------------------------------------------


def _log_probs(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the common arguments; return (log q, log p) at temperature, [..., V] each, float32+."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got student {tuple(student_logits.shape)}"
            f" and teacher {tuple(teacher_logits.shape)} (different vocabularies? slice or pad both to the"
            " shared vocabulary first)"
        )
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}; got {reduction!r}")
    if mask is not None and mask.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"mask must have the logits' shape without the vocabulary axis, {tuple(student_logits.shape[:-1])};"
            f" got {tuple(mask.shape)}"
        )
    # Half precision loses too much in log-softmax differences; float64 is kept for gradcheck.
    dtype = torch.promote_types(
        torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32
    )
    # At T = 1 the division is skipped: a whole [tokens, V] pass per side.
    scale = (lambda x: x) if temperature == 1.0 else (lambda x: x / temperature)
    logp_s = torch.log_softmax(scale(student_logits.to(dtype)), dim=-1)
    logp_t = torch.log_softmax(scale(teacher_logits.to(dtype)), dim=-1)
    return logp_s, logp_t


def _reduce(values: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Per-token values [...] -> scalar ("mean", "sum") or [...] ("none")."""
    if mask is not None:
        mask = mask.bool()
        # masked_fill, not multiplication: uncounted tokens may hold inf/NaN (fully masked rows).
        values = values.masked_fill(~mask, 0.0)
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    # At least 1 in the denominator: no counted token gives 0 / 1 = 0, not NaN.
    if mask is None:
        return total / max(values.numel(), 1)
    return total / mask.sum().clamp(min=1)


def _check_beta(beta: float) -> None:
    if not 0.0 < beta < 1.0:
        raise ValueError(
            f"jsd needs beta strictly between 0 and 1, got {beta}: as beta -> 0 or 1 the JSD tends to 0,"
            " not to a KL. For the endpoints use forward_kl (TRL's beta=0) or reverse_kl (TRL's beta=1)."
        )


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


# --- public losses: each is its per-token core plus the common arguments ---------------------------------


class Loss(Protocol):
    """A public loss: the common arguments, plus at most one of its own (`extra_parameter`)."""

    extra_parameter: str | None

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        *,
        temperature: float = 1.0,
        mask: torch.Tensor | None = None,
        reduction: Reduction = "mean",
        **param: float,
    ) -> torch.Tensor: ...


_COMMON_PARAMETERS = [
    inspect.Parameter("student_logits", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor),
    inspect.Parameter("teacher_logits", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor),
    inspect.Parameter("temperature", inspect.Parameter.KEYWORD_ONLY, default=1.0, annotation=float),
    inspect.Parameter("mask", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=torch.Tensor | None),
    inspect.Parameter("reduction", inspect.Parameter.KEYWORD_ONLY, default="mean", annotation=Reduction),
]


def _loss(
    name: str,
    core: Callable[..., torch.Tensor],
    doc: str,
    param: tuple[str, float, Callable[[float], None]] | None = None,
) -> Loss:
    """The public loss `name`: validate, log-softmax both sides at the temperature, apply `core`
    (log q, log p[, param]) -> [...] per token, reduce. `param`: (keyword, default, check) of the one
    extra argument a loss takes (jsd's beta, the skewed KLs' alpha)."""
    key, default, check = param if param is not None else (None, None, None)

    def loss(student_logits, teacher_logits, *, temperature=1.0, mask=None, reduction="mean", **extra):
        if extra.keys() - {key}:
            unexpected = sorted(extra.keys() - {key})[0]
            raise TypeError(f"{name}() got an unexpected keyword argument {unexpected!r}")
        args = ()
        if key is not None:
            value = extra.get(key, default)
            check(value)
            args = (value,)
        logp_s, logp_t = _log_probs(student_logits, teacher_logits, temperature, mask, reduction)
        return _reduce(core(logp_s, logp_t, *args), mask, reduction)

    own = (
        []
        if key is None
        else [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=float)]
    )
    loss.__signature__ = inspect.Signature([*_COMMON_PARAMETERS, *own], return_annotation=torch.Tensor)
    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc + '\n\nLogits [..., V], mask [...]; returns a scalar, or [...] for reduction="none".'
    loss.extra_parameter = key  # read by `divergence`
    return loss


forward_kl = _loss(
    "forward_kl",
    _forward_kl_tokens,
    "KL(p ‖ q) = Σ p (log p − log q): mean-seeking, the classic distillation loss.",
)
reverse_kl = _loss(
    "reverse_kl", _reverse_kl_tokens, "KL(q ‖ p) = Σ q (log q − log p): mode-seeking (MiniLLM)."
)
jsd = _loss(
    "jsd",
    _jsd_tokens,
    "Generalized Jensen-Shannon: β KL(p ‖ m) + (1−β) KL(q ‖ m), m = β p + (1−β) q.\n\n"
    "Matches TRL GKD's generalized_jsd_loss (β weights the teacher); bounded by the entropy of (β, 1−β),\n"
    "log 2 at β = 0.5; β strictly between 0 and 1.",
    ("beta", 0.5, _check_beta),
)
skew_forward_kl = _loss(
    "skew_forward_kl",
    _skew_forward_kl_tokens,
    "KL(p ‖ α p + (1−α) q) (DistiLLM): forward_kl at α = 0, zero at α = 1.",
    ("alpha", 0.1, _check_alpha),
)
skew_reverse_kl = _loss(
    "skew_reverse_kl",
    _skew_reverse_kl_tokens,
    "KL(q ‖ (1−α) p + α q) (DistiLLM): reverse_kl at α = 0, zero at α = 1.",
    ("alpha", 0.1, _check_alpha),
)
tvd = _loss("tvd", _tvd_tokens, "Total variation distance ½ Σ |p − q|, in [0, 1] and symmetric.")


# --- registry ---------------------------------------------------------------------------------------------

LOSSES: dict[str, Loss] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
}


def get_loss(name: str) -> Loss:
    """The loss function registered under `name`; ValueError listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}") from None


def divergence(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    beta: float = 0.5,
    alpha: float = 0.1,
) -> torch.Tensor:
    """Call the loss `name`, passing `beta` only to jsd and `alpha` only to the skewed KLs."""
    fn = get_loss(name)
    extra = (
        {fn.extra_parameter: {"beta": beta, "alpha": alpha}[fn.extra_parameter]} if fn.extra_parameter else {}
    )
    return fn(
        student_logits, teacher_logits, temperature=temperature, mask=mask, reduction=reduction, **extra
    )


# --- on-policy: the `sampled` estimator (policy gradient from one teacher log-prob per token) -------


def sampling_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """log mu(y): the log-prob of each token [N] under the sampling distribution that `generate` used,
    softmax(logits / temperature) restricted to the top_p nucleus; logits [N, V] (detached here)."""
    logp = torch.log_softmax(
        logits.detach().to(torch.promote_types(logits.dtype, torch.float32)) / temperature, -1
    )
    if top_p < 1.0:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        # transformers' TopPLogitsWarper keeps a token when the mass strictly before it is below top_p.
        before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
        drop = (before >= top_p).scatter(1, order, before >= top_p)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    return logp.gather(1, tokens[:, None]).squeeze(1)


def sampled_token_loss(
    student_logits: torch.Tensor,
    tokens: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token policy-gradient loss on the student's own samples; returns (loss sum, reward sum).

    student_logits: [N, V] at the sampled positions (differentiable); tokens: [N] the sampled ids;
    teacher_logprobs: [N] log p(y_t) of those ids under the teacher. With log q the student's log-prob
    (temperature 1) and log mu the sampling distribution's, the per-token reward is
    A = log p(y) - log q(y) (detached) and the loss -w * A with w = exp(log q(y) - log mu(y)), whose value
    is 1 when the student sampled at temperature 1 and top_p 1. Its expected gradient over y ~ mu is
    -E_q[A grad log q] = grad KL(q || p): reverse KL by importance-weighted policy gradient (TRL's
    DistillationTrainer, Thinking Machines' on-policy distillation), using one teacher log-prob per token.
    The reward sum is minus an unbiased estimate of sum_t KL(q || p) under mu = q.
    """
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # float64 stays float64 (tests)
    logq_all = torch.log_softmax(student_logits.to(dtype), dim=-1)
    logq = logq_all.gather(1, tokens[:, None]).squeeze(1)
    logmu = sampling_logprobs(student_logits, tokens, temperature, top_p)
    reward = (teacher_logprobs.to(dtype) - logq).detach()
    weight = torch.exp(logq - logmu)
    return -(weight * reward).sum(), reward.sum()
