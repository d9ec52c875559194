"""How well a model predicts held-out target tokens, alone and against a teacher: one scoring loop.

Per target token (labels != -100, shifted like training: position t predicts token t + 1):
- cross-entropy of the model on the token; perplexity = exp(mean CE);
- with a teacher: top-1 agreement (argmax model == argmax teacher), KL(teacher ‖ model) at T = 1,
  in nats per token, and the acceptance rate 1 - TVD(teacher, model), the probability that
  speculative sampling accepts a token the model drafts (`lmdistill.eval.speculative`).

Both models' final hidden states go through their heads a chunk of tokens at a time (logits sliced to
the shared real vocabulary), so no [tokens, vocab] tensor is kept. Training's held-out report,
`lmdistill eval` and the demo all call `score_tokens`, so a model's perplexity is the same number
whichever of them prints it, with or without a teacher.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lmdistill.chunked import Head
from lmdistill.data import IGNORE_INDEX, DistillCollator
from lmdistill.losses import forward_kl, tvd
from lmdistill.models.forward import final_hidden


@dataclass
class TokenScores:
    """Means over `tokens` target tokens. perplexity: exp(mean CE) of the model; top1: fraction of
    tokens where argmax model == argmax teacher; kl: mean KL(teacher ‖ model) in nats per token
    (T = 1); acceptance: mean 1 - TVD(teacher, model) per token (T = 1). top1, kl and acceptance are
    None when no teacher was given."""

    perplexity: float
    tokens: int
    top1: float | None = None
    kl: float | None = None
    acceptance: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScoreSums:
    """Running sums over target tokens: CE and KL in nats, TVD in probability, agreement as a count."""

    ce: float = 0.0
    kl: float = 0.0
    tvd: float = 0.0
    agree: int = 0
    tokens: int = 0

    def add(
        self,
        head: Head,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        vocab: int,
        *,
        t_head: Head | None = None,
        t_hidden: torch.Tensor | None = None,
        chunk_size: int = 1024,
    ) -> ScoreSums:
        """Add N target tokens: hidden [N, H] (the model's final hidden states at the positions that
        predict them), targets [N] ids < vocab, t_hidden [N, H_t] the teacher's (or None)."""
        for start in range(0, targets.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = head.logits(hidden[rows], vocab)  # float32 [n, vocab]
            self.ce += F.cross_entropy(logits, targets[rows], reduction="sum").item()
            if t_head is not None and t_hidden is not None:
                t_logits = t_head.logits(t_hidden[rows], vocab)
                self.agree += int((logits.argmax(-1) == t_logits.argmax(-1)).sum())
                self.kl += forward_kl(logits, t_logits, reduction="sum").item()
                self.tvd += tvd(logits, t_logits, reduction="sum").item()
        self.tokens += targets.shape[0]
        return self

    def scores(self, *, with_teacher: bool) -> TokenScores:
        n = max(self.tokens, 1)
        if not with_teacher:
            return TokenScores(perplexity=math.exp(self.ce / n), tokens=self.tokens)
        return TokenScores(
            math.exp(self.ce / n),
            self.tokens,
            top1=self.agree / n,
            kl=self.kl / n,
            acceptance=1.0 - self.tvd / n,
        )


@torch.no_grad()
def score_tokens(
    model: torch.nn.Module,
    features: list[dict],
    *,
    vocab: int,
    pad_token_id: int,
    teacher: torch.nn.Module | None = None,
    batch_size: int = 8,
    chunk_size: int = 1024,
) -> TokenScores:
    """Score `model` (and compare it with `teacher`, when given) on tokenized `features`
    (input_ids/labels/attention_mask lists). `vocab`: the real vocabulary both heads are sliced to
    (`lmdistill.models.check_vocab` for two models, `checked_vocab_size` for one). Both models run in
    eval mode; their training/eval modes are restored afterwards."""
    collate = DistillCollator(pad_token_id=pad_token_id)
    models = [model] if teacher is None else [model, teacher]
    heads = [Head.of(m, trainable=False) for m in models]
    modes = [m.training for m in models]
    device = next(model.parameters()).device
    sums = ScoreSums()
    try:
        for m in models:
            m.eval()
        for i in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in collate(features[i : i + batch_size]).items()}
            targets = batch["labels"][:, 1:]
            mask = targets != IGNORE_INDEX
            hidden = [
                final_hidden(m, batch["input_ids"], batch["attention_mask"])[:, :-1][mask] for m in models
            ]
            sums.add(
                heads[0],
                hidden[0],
                targets[mask],
                vocab,
                t_head=heads[1] if teacher is not None else None,
                t_hidden=hidden[1] if teacher is not None else None,
                chunk_size=chunk_size,
            )
    finally:
        for m, was_training in zip(models, modes, strict=True):
            m.train(was_training)
    return sums.scores(with_teacher=teacher is not None)
