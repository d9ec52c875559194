"""CE + KD through the output heads in token chunks: no [tokens, vocab] logits of either model is kept.

The student's final hidden states go through its head a chunk of tokens at a time; the chunk's
CE and divergence are computed and differentiated at once (the gradients for the hidden states and the
head are accumulated in the forward pass, as Liger-Kernel does), so peak memory holds one chunk of
logits instead of all of them, and backward costs nothing extra. Only counted target positions are
passed in, so prompt and padding tokens never reach the head.

All sums are over tokens; the trainer divides by the number of target tokens in the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmdistill.losses import divergence


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
        if head.weight.numel() == 0 or head.weight.dim() != 2:
            raise UserError(
                "the output head's weight is sharded (FSDP or DeepSpeed ZeRO-3); chunked KD reads it whole: "
                "use DDP or ZeRO-1/2"
            )
        return cls(head.weight, head.bias, cap)

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


@dataclass
class LossSums:
    """Sums over the target tokens (scalars): `total` carries the gradient; `ce` and `kd` are detached."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    tokens: int


def _chunk_terms(spec, s_logits, labels, t_logits):
    """Float32 sums over one chunk: (ce, kd); kd is 0 without a teacher."""
    # CE is computed even at weight 0: it is logged, and costs one logsumexp per chunk.
    ce = F.cross_entropy(s_logits, labels, reduction="sum")
    if t_logits is None:
        return ce, s_logits.new_zeros(())
    kd = divergence(
        spec.loss,
        s_logits,
        t_logits,
        temperature=spec.temperature,
        reduction="sum",
        beta=spec.beta,
        alpha=spec.alpha,
    )
    return ce, kd


def _vocab(spec, s_head):
    return spec.vocab or s_head.weight.shape[0]  # the student's head is always a plain Linear


class _ChunkedLoss(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward only scales them."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, labels, t_hidden, spec, s_head, t_head):
        vocab = _vocab(spec, s_head)
        grad_h = torch.zeros_like(s_hidden) if ctx.needs_input_grad[0] else None
        # Accumulate head gradients in fp32 whatever the weight dtype: many small chunk sums.
        grad_w = grad_b = None  # only for a trainable head (not a frozen one under LoRA)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros(s_weight.shape, dtype=torch.float32, device=s_weight.device)
        if s_bias is not None and ctx.needs_input_grad[2]:
            grad_b = torch.zeros(s_bias.shape, dtype=torch.float32, device=s_bias.device)
        w = s_weight.detach().requires_grad_(ctx.needs_input_grad[1])
        b = None if s_bias is None else s_bias.detach().requires_grad_(ctx.needs_input_grad[2])
        ce_sum = s_hidden.new_zeros((), dtype=torch.float32)
        kd_sum = ce_sum.clone()
        total_sum = ce_sum.clone()
        for start in range(0, s_hidden.shape[0], spec.chunk_size):
            end = start + spec.chunk_size
            h = s_hidden[start:end].detach().requires_grad_(ctx.needs_input_grad[0])
            t_logits = None
            if t_hidden is not None:
                t_logits = t_head.logits(t_hidden[start:end], vocab)
            with torch.enable_grad():
                s_logits = s_head.logits(h, vocab, weight=w, bias=b)
                ce, kd = _chunk_terms(spec, s_logits, labels[start:end], t_logits)
                total = spec.ce_weight * ce + spec.kd_weight * kd
            wanted = [(x, i) for x, i in ((h, 0), (w, 1), (b, 2)) if x is not None and x.requires_grad]
            if wanted:
                grads = torch.autograd.grad(total, [x for x, _ in wanted])
                for g, (_, i) in zip(grads, wanted, strict=True):
                    if i == 0:
                        grad_h[start:end] = g
                    elif i == 1:
                        grad_w += g
                    else:
                        grad_b += g
            ce_sum += ce.detach()
            kd_sum += kd.detach()
            total_sum += total.detach()
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
        return scale(grad_h), scale(grad_w), scale(grad_b), None, None, None, None, None


def chunked_loss(
    s_hidden: torch.Tensor,
    s_head: Head,
    labels: torch.Tensor,
    spec: LossSpec,
    t_hidden: torch.Tensor | None = None,
    t_head: Head | None = None,
) -> LossSums:
    """CE + KD summed over N target tokens, through the heads in chunks of `spec.chunk_size` tokens.

    s_hidden: [N, H_s] student final hidden states at the target positions (position t predicts labels[t]).
    labels: [N] token ids < vocab. t_hidden: [N, H_t] teacher hidden states at the same positions (no
    grad), or None for CE only. Logits are sliced to `spec.vocab` rows (the shared real vocabulary).
    """
    n = s_hidden.shape[0]
    if t_hidden is not None and t_hidden.shape[0] != n:
        raise ValueError(f"student has {n} target positions, teacher {t_hidden.shape[0]}")
    use_teacher = t_hidden is not None and spec.kd_weight != 0.0
    t_hidden = t_hidden.detach() if use_teacher else None
    needs_grad = torch.is_grad_enabled() and (s_hidden.requires_grad or s_head.weight.requires_grad)
    if needs_grad:
        total, ce, kd = _ChunkedLoss.apply(
            s_hidden, s_head.weight, s_head.bias, labels, t_hidden, spec, s_head, t_head
        )
        return LossSums(total, ce, kd, n)
    vocab = _vocab(spec, s_head)
    ce_sum = kd_sum = s_hidden.new_zeros((), dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, n, spec.chunk_size):
            end = start + spec.chunk_size
            t_logits = None if t_hidden is None else t_head.logits(t_hidden[start:end], vocab)
            ce, kd = _chunk_terms(
                spec, s_head.logits(s_hidden[start:end], vocab), labels[start:end], t_logits
            )
            ce_sum, kd_sum = ce_sum + ce, kd_sum + kd
    return LossSums(spec.ce_weight * ce_sum + spec.kd_weight * kd_sum, ce_sum, kd_sum, n)


def full_logits_loss(
    s_hidden: torch.Tensor,
    s_head: Head,
    labels: torch.Tensor,
    spec: LossSpec,
    t_hidden: torch.Tensor | None = None,
    t_head: Head | None = None,
) -> LossSums:
    """The plain reference: all logits at once, autograd through everything. Same meaning as `chunked_loss`."""
    vocab = _vocab(spec, s_head)
    t_logits = None
    if t_hidden is not None and spec.kd_weight != 0.0:
        with torch.no_grad():
            t_logits = t_head.logits(t_hidden, vocab)
    ce, kd = _chunk_terms(spec, s_head.logits(s_hidden, vocab), labels, t_logits)
    return LossSums(spec.ce_weight * ce + spec.kd_weight * kd, ce.detach(), kd.detach(), s_hidden.shape[0])
