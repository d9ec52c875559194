"""How close a student is to its teacher on held-out target tokens: agreement, KL, perplexity.

All three are computed on the same target tokens (labels != -100, shifted like training), in token
chunks through the heads, so no [tokens, vocab] tensor is held. Teacher and student must share the
vocabulary (`vocab` rows are compared).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lmdistill.chunked import Head
from lmdistill.data import DistillCollator
from lmdistill.losses import forward_kl
from lmdistill.models.forward import final_hidden


@dataclass
class Agreement:
    """top1: fraction of target tokens where argmax student == argmax teacher; kl: mean KL(teacher ‖
    student) per token in nats (T = 1); perplexity: exp(mean CE) of the student on the targets."""

    top1: float
    kl: float
    perplexity: float
    tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def compare_to_teacher(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    features: list[dict],
    *,
    vocab: int,
    pad_token_id: int,
    batch_size: int = 8,
    chunk_size: int = 1024,
) -> Agreement:
    """Evaluate `student` against `teacher` on tokenized `features` (input_ids/labels/attention_mask)."""
    collate = DistillCollator(pad_token_id=pad_token_id)
    s_head, t_head = Head.of(student, trainable=False), Head.of(teacher, trainable=False)
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    agree = kl = ce = 0.0
    tokens = 0
    try:
        for i in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in collate(features[i : i + batch_size]).items()}
            targets = batch["labels"][:, 1:]
            mask = targets != -100
            s_h = final_hidden(student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
            t_h = final_hidden(teacher, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
            y = targets[mask]
            for start in range(0, y.shape[0], chunk_size):
                sl = s_head.logits(s_h[start : start + chunk_size], vocab)
                tl = t_head.logits(t_h[start : start + chunk_size], vocab)
                agree += (sl.argmax(-1) == tl.argmax(-1)).sum().item()
                kl += forward_kl(sl, tl, reduction="sum").item()
                ce += F.cross_entropy(sl, y[start : start + chunk_size], reduction="sum").item()
            tokens += y.shape[0]
    finally:
        student.train(was_training)
    n = max(tokens, 1)
    return Agreement(top1=agree / n, kl=kl / n, perplexity=math.exp(ce / n), tokens=tokens)
