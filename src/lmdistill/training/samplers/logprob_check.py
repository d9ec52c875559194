"""Are the server's samples the student's? Their log-probs under the student against what vLLM reported.

Right after a sync the server holds exactly the student's weights, so vLLM's log-prob of every sampled
token (raw: the model's distribution at temperature 1, vLLM's default --logprobs-mode raw_logprobs) must
equal the student's own log_softmax at that position, up to kernel differences (float32 on CPU: about
1e-4 nats; bf16 on a GPU: more). A sync that did not reach the server, a server serving another model
or another adapter base, or temperature-processed log-probs move the mean difference far above that,
and the run stops with one UserError instead of training on another model's samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdistill.chunked import Head
from lmdistill.models.forward import final_hidden, unwrap


@dataclass(frozen=True)
class Agreement:
    """Mean and max |log q_student(y) - log q_vllm(y)| in nats over `tokens` sampled tokens."""

    mean_abs: float
    max_abs: float
    tokens: int


@torch.no_grad()
def student_token_logprobs(
    model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]], chunk_size: int = 256
) -> list[torch.Tensor]:
    """The student's log-prob (temperature 1, the head's whole width as vLLM's) of each completion token:
    per row a float32 [T_b]. One forward per row (no padding to get wrong); eval mode for the call. The
    forwards run on the model inside DDP (peft kept): DDP's forward is a collective (it broadcasts
    buffers), and processes may check different numbers of rows."""
    while hasattr(model, "module"):  # DDP and similar wrappers; a peft model stays whole (its adapters count)
        model = model.module
    inner = unwrap(model)
    device = next(inner.parameters()).device
    head = Head.of(inner, trainable=False)
    width = 1 << 62  # every row of the head (a padded vocabulary's too), as vLLM's softmax
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt, completion in zip(prompts, completions, strict=True):
            if not completion:
                out.append(torch.zeros(0))
                continue
            ids = torch.tensor([prompt + completion], device=device)
            hidden = final_hidden(model, ids, torch.ones_like(ids))[0, len(prompt) - 1 : -1]  # [T, H]
            parts = []
            for c in range(0, hidden.shape[0], chunk_size):
                logp = torch.log_softmax(head.logits(hidden[c : c + chunk_size], width), -1)
                targets = ids[0, len(prompt) + c : len(prompt) + c + chunk_size]
                parts.append(logp.gather(1, targets[:, None]).squeeze(1))
            out.append(torch.cat(parts).float().cpu())
    finally:
        model.train(was_training)
    return out


def agreement(student: list[torch.Tensor], reported: list[list[float]]) -> Agreement:
    """Compare per-row log-probs (the student's [T_b], the server's T_b floats)."""
    diffs = [
        (s - torch.tensor(r, dtype=torch.float32)).abs()
        for s, r in zip(student, reported, strict=True)
        if len(r)
    ]
    if not diffs:
        return Agreement(0.0, 0.0, 0)
    d = torch.cat(diffs)
    return Agreement(float(d.mean()), float(d.max()), int(d.numel()))
