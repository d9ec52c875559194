"""The KD loss cases of bench_gpu.py (groups `loss`, `loss_liger`, `loss_compiled`): lmdistill's chunked loss
and its full-logits reference, Liger's chunked and Triton losses, and two torch.compile variants of the chunk
step, all forward + backward on the same random inputs."""

from __future__ import annotations

import time

from gpu_context import Ctx, _case, _Skip, _spec, _timed


def _loss_inputs(ctx: Ctx):
    """Student/teacher hidden states and heads at the loss benchmark's sizes (fixed seed)."""
    import torch

    sz = ctx.sz
    n, v = sz["tokens"], sz["vocab"]
    hs, ht = sz["student"]["hidden_size"], sz["teacher"]["hidden_size"]
    g = torch.Generator(device=ctx.device).manual_seed(0)  # drawn on the device: seconds less per case

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=ctx.device) * scale).to(ctx.dtype)

    s_w = torch.nn.Parameter(rand(v, hs, scale=0.02))
    t_w = rand(v, ht, scale=0.02)
    s_h = rand(n, hs).requires_grad_()
    t_h = rand(n, ht)
    labels = torch.randint(0, v, (n,), generator=g, device=ctx.device)
    return s_h, s_w, t_h, t_w, labels


def _grad_norm(x) -> float:
    return float(x.grad.float().norm()) if x.grad is not None else float("nan")


def _lmdistill_loss(ctx: Ctx, kind: str, loss: str, chunk: int, ce: float = 0.5, kd: float = 0.5) -> dict:
    """lmdistill's chunked loss (kind "chunked") or the full-logits reference ("naive"), fwd + bwd."""
    from lmdistill.chunked import Head, chunked_loss, full_logits_loss

    s_h, s_w, t_h, t_w, labels = _loss_inputs(ctx)
    spec = _spec(ctx, loss, chunk, ce, kd)
    fn = chunked_loss if kind == "chunked" else full_logits_loss
    box = {}

    def step():
        s_h.grad = s_w.grad = None
        sums = fn(s_h, Head(s_w), labels, spec, t_h, Head(t_w))
        sums.total.backward()
        box["sums"] = sums

    out = _timed(ctx, step)
    n = box["sums"].tokens
    out.update(
        loss_per_token=float(box["sums"].total.detach()) / n,
        grad_h_norm_per_token=_grad_norm(s_h) / n,
        grad_w_norm_per_token=_grad_norm(s_w) / n,
        chunk=chunk if kind == "chunked" else None,
        loss=loss,
        ce_weight=ce,
        kd_weight=kd,
    )
    return out


def _timed_module(ctx: Ctx, mod, s_h, s_w, t_h, t_w, labels) -> tuple[dict, object]:
    """`_timed` on forward + backward of a Liger loss module called as mod(s_h, s_w, t_h, t_w, labels);
    the timing dict and the last call's loss (a scalar tensor)."""
    box = {}

    def step():
        s_h.grad = s_w.grad = None
        loss = mod(s_h, s_w, t_h, t_w, labels)
        loss.backward()
        box["loss"] = loss

    return _timed(ctx, step), box["loss"]


def _liger_chunked(ctx: Ctx, chunk: int) -> dict:
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except ImportError as e:
        raise _Skip(f"liger_kernel.chunked_loss cannot be imported: {e}") from e

    s_h, s_w, t_h, t_w, labels = _loss_inputs(ctx)
    # Liger's defaults: CE 0.5 + JSD 0.5 (beta 0.5), mean over tokens, torch.compile'd chunk step (GPU).
    mod = LigerFusedLinearJSDLoss(
        weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5, chunk_size=chunk, compiled=ctx.cuda
    )
    t0 = time.perf_counter()
    out, loss = _timed_module(ctx, mod, s_h, s_w, t_h, t_w, labels)
    out.update(
        loss_per_token=float(loss.detach()),
        grad_h_norm_per_token=_grad_norm(s_h),
        grad_w_norm_per_token=_grad_norm(s_w),
        chunk=chunk,
        loss="jsd",
        ce_weight=0.5,
        kd_weight=0.5,
        compiled=ctx.cuda,
        first_calls_s=round(time.perf_counter() - t0, 2),
    )
    return out


def _liger_triton(ctx: Ctx) -> dict:
    if not ctx.cuda:
        raise _Skip("Liger's Triton kernels need a GPU")
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD
    except ImportError as e:
        raise _Skip(f"liger_kernel.transformers cannot be imported: {e}") from e

    s_h, s_w, t_h, t_w, labels = _loss_inputs(ctx)
    mod = LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0)  # JSD only, mean over tokens
    out, loss = _timed_module(ctx, mod, s_h, s_w, t_h, t_w, labels)
    out.update(
        loss_per_token=float(loss.detach()),
        grad_h_norm_per_token=_grad_norm(s_h),
        grad_w_norm_per_token=_grad_norm(s_w),
        loss="jsd",
        ce_weight=0.0,
        kd_weight=1.0,
    )
    return out


def _compiled_terms(ctx: Ctx, loss: str, chunk: int) -> dict:
    """(a) the library's chunk terms (CE + divergence over one chunk's logits) under torch.compile."""
    import torch

    import lmdistill.chunked as ch

    original = ch._chunk_terms
    ch._chunk_terms = torch.compile(original, dynamic=False, backend=ctx.compile_backend)
    try:
        t0 = time.perf_counter()
        out = _lmdistill_loss(ctx, "chunked", loss, chunk)
        out["first_calls_s"] = round(time.perf_counter() - t0, 2)
        out["compiled"] = "chunk terms (lmdistill.chunked._chunk_terms)"
        return out
    finally:
        ch._chunk_terms = original


def _fused_compiled(ctx: Ctx, loss: str, chunk: int) -> dict:
    """(b) a Liger-style chunk step: both head matmuls, fp32 logits, CE + divergence and their gradients
    (torch.func.grad_and_value) compiled as one function; the library's loss terms, the library's sums."""
    import torch
    import torch.nn.functional as F

    from lmdistill.chunked import _chunk_terms

    s_h, s_w, t_h, t_w, labels = _loss_inputs(ctx)
    spec = _spec(ctx, loss, chunk)
    vocab = spec.vocab

    def chunk_total(h, w, lab, th, tw):
        s_logits = F.linear(h, w[:vocab]).float()
        t_logits = F.linear(th, tw[:vocab]).float()
        ce, kd = _chunk_terms(spec, s_logits, lab, t_logits)
        return spec.ce_weight * ce + spec.kd_weight * kd, (ce, kd)

    grad_step = torch.compile(
        torch.func.grad_and_value(chunk_total, argnums=(0, 1), has_aux=True),
        dynamic=False,
        backend=ctx.compile_backend,
    )
    box = {}

    def step():
        s_h.grad = s_w.grad = None
        grad_h = torch.empty_like(s_h)
        grad_w = torch.zeros(s_w.shape, dtype=torch.float32, device=s_w.device)
        total = torch.zeros((), dtype=torch.float32, device=s_w.device)
        h, w = s_h.detach(), s_w.detach()
        for start in range(0, h.shape[0], chunk):
            end = start + chunk
            (gh, gw), (tot, _) = grad_step(h[start:end], w, labels[start:end], t_h[start:end], t_w)
            grad_h[start:end] = gh
            grad_w += gw
            total += tot
        s_h.grad, s_w.grad = grad_h, grad_w.to(s_w.dtype)
        box["total"] = total

    t0 = time.perf_counter()
    out = _timed(ctx, step)
    n = s_h.shape[0]
    out.update(
        loss_per_token=float(box["total"]) / n,
        grad_h_norm_per_token=_grad_norm(s_h) / n,
        grad_w_norm_per_token=_grad_norm(s_w) / n,
        chunk=chunk,
        loss=loss,
        ce_weight=0.5,
        kd_weight=0.5,
        compiled="fused chunk step (matmuls + terms + grads)",
        first_calls_s=round(time.perf_counter() - t0, 2),
    )
    return out


# ----------------------------------------------------------------------------------------------------
# groups


def group_loss(ctx: Ctx) -> None:
    c1, c2 = ctx.sz["chunks"]
    for loss, tag in (("jsd", "jsd"), ("forward_kl", "fkl")):
        for chunk in (c1, c2):
            _case(ctx, f"loss_ours_{tag}_c{chunk}", _lmdistill_loss, "chunked", loss, chunk)
    _case(ctx, f"loss_ours_jsd_c{c1 // 4}", _lmdistill_loss, "chunked", "jsd", c1 // 4)
    _case(ctx, f"loss_ours_jsd_kdonly_c{c1}", _lmdistill_loss, "chunked", "jsd", c1, 0.0, 1.0)
    # Naive last: it needs the most memory, and an OOM must not cost the cases above.
    _case(ctx, "loss_naive_jsd", _lmdistill_loss, "naive", "jsd", c1)
    _case(ctx, "loss_naive_fkl", _lmdistill_loss, "naive", "forward_kl", c1)


def group_loss_liger(ctx: Ctx) -> None:
    c1, _ = ctx.sz["chunks"]
    _case(ctx, f"loss_liger_chunked_jsd_c{c1}", _liger_chunked, c1)
    _case(ctx, "loss_liger_triton_jsd_kdonly", _liger_triton)


def group_loss_compiled(ctx: Ctx) -> None:
    c1, _ = ctx.sz["chunks"]
    _case(ctx, f"loss_compiled_terms_jsd_c{c1}", _compiled_terms, "jsd", c1)
    _case(ctx, f"loss_compiled_fused_jsd_c{c1}", _fused_compiled, "jsd", c1)
