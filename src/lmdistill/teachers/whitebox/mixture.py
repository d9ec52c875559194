"""Several in-process teachers as one dense target, per token: a weighted mixture, or the one teacher
that puts the most probability on the actual next token.

    mix:     log m(v) = logsumexp_i (log w_i + log p_i(v)),   p_i = softmax(z_i / T_i),  sum_i w_i = 1
    select:  the same with w one-hot on argmax_i p_i(y_t) (y_t the row's actual next token; ties go to
             the teacher listed first)

The chunked loss asks a teacher head for logits a chunk of tokens at a time (`Head.logits`); `MixedHead`
answers with the mixture's log-probs (times the loss temperature, which the loss divides out again),
accumulating one teacher at a time with logaddexp: at most two [chunk, vocab] tensors live at once,
never one per teacher, never [tokens, vocab]. Its "hidden states" are each token's m log-weights
followed by every teacher's final hidden states, side by side: [N, m + H_1 + ... + H_m] (float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdistill.chunked import Head


@dataclass(frozen=True)
class MixedHead:
    """The heads of m teachers read as one: `logits(hidden, vocab)` -> scale * log m [n, vocab] float32.

    heads: each teacher's `Head`; widths: their hidden sizes H_i; dtypes: their hidden states' dtypes;
    temperatures: each T_i; scale: the loss temperature (the chunked loss divides logits by it).
    """

    heads: tuple[Head, ...]
    widths: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    temperatures: tuple[float, ...]
    scale: float = 1.0
    module = None  # duck-types `Head` where the chunked loss looks
    softcap = None

    def split(self, hidden: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[n, m + sum H_i] -> (log-weights float32 [n, m], each teacher's [n, H_i] in its own dtype)."""
        m = len(self.heads)
        parts, col = [], m
        for width, dtype in zip(self.widths, self.dtypes, strict=True):
            parts.append(hidden[:, col : col + width].to(dtype))
            col += width
        return hidden[:, :m].float(), parts

    @torch.no_grad()
    def log_probs(self, hidden: torch.Tensor, vocab: int) -> torch.Tensor:
        """log m: [n, vocab] float32, the mixture's log-probabilities (each row's weights its own)."""
        log_w, states = self.split(hidden)
        acc = None
        for i, (head, h, t) in enumerate(zip(self.heads, states, self.temperatures, strict=True)):
            if torch.isneginf(log_w[:, i]).all():  # no token of this chunk takes this teacher
                continue
            term = torch.log_softmax(head.logits(h, vocab) / t, dim=-1).add_(log_w[:, i : i + 1])
            acc = term if acc is None else torch.logaddexp(acc, term)
        if acc is None:
            raise ValueError("a mixture with no teacher of positive weight")
        return acc

    def logits(self, hidden: torch.Tensor, vocab: int, weight=None, bias=None) -> torch.Tensor:
        return self.log_probs(hidden, vocab) * self.scale


def mixed_hidden(log_weights: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
    """[N, m] log-weights and m teachers' [N, H_i] final hidden states -> [N, m + sum H_i] float32."""
    return torch.cat([log_weights.float(), *(h.float() for h in hidden)], dim=1)


@torch.no_grad()
def select_log_weights(
    heads: list[Head],
    hidden: list[torch.Tensor],
    temperatures: list[float],
    next_tokens: torch.Tensor,
    vocab: int,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Per token, 0 for the teacher with the highest log p_i(y_t) and -inf for the others: [N, m].

    next_tokens: int64 [N] the actual next token of each position. One extra pass through each head,
    `chunk_size` rows at a time. torch.argmax returns the first maximum: ties go to the first teacher.
    """
    n, m = next_tokens.shape[0], len(heads)
    scores = torch.empty((n, m), dtype=torch.float32, device=next_tokens.device)
    for i, (head, h, t) in enumerate(zip(heads, hidden, temperatures, strict=True)):
        for c in range(0, n, chunk_size):
            logp = torch.log_softmax(head.logits(h[c : c + chunk_size], vocab) / t, dim=-1)
            y = next_tokens[c : c + chunk_size, None].to(logp.device)
            scores[c : c + chunk_size, i] = logp.gather(1, y).squeeze(1).to(scores.device)
    out = torch.full((n, m), float("-inf"), device=next_tokens.device)
    out[torch.arange(n, device=out.device), scores.argmax(1)] = 0.0
    return out
