"""Teacher scoring on the worker thread: log-probs of given token sequences.

`score_batch` runs several token sequences through the model in one padded forward (right padding, so
every real position sees exactly its own prefix) and, per position t >= 1, returns the log-prob of the
actual token t given tokens < t, its rank, and the k most likely tokens, all from the full-vocabulary
log_softmax at temperature 1 in float32. Logits are computed a chunk of positions at a time through
the model's head, never [batch, seq, vocab] at once, as `lmdistill capture` does; the vocabulary is the
tokenizer's real one (head rows past it, padding, are dropped), so a server score equals an offline
capture's at the same k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdistill.chunked import Head
from lmdistill.models.forward import final_hidden
from lmdistill.models.vocab import head_rows

#: Positions per chunk through the head: [CHUNK, vocab] float32 logits at a time.
CHUNK_POSITIONS = 256
#: Most padded tokens (batch x longest) in one scoring forward; longer groups are split.
MAX_BATCH_TOKENS = 16384


@dataclass
class Scored:
    """One scored sequence of n tokens. Lists indexed by position t = 1..n-1 (index t - 1): the
    log-prob (nats, temperature 1) of token t given tokens < t, its vocabulary rank (1 = most likely),
    and the k most likely tokens at t, best first. `tokens[t]` is `tokenizer.decode([ids[t]])`;
    `text` is the whole sequence decoded (what `echo` returns for a token-id prompt)."""

    ids: list[int]
    tokens: list[str]
    text: str
    logprobs: list[float]
    ranks: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]
    top_tokens: list[list[str]]


def score_vocab(model, tokenizer) -> int:
    """The vocabulary scored: the tokenizer's real size (as `lmdistill capture` uses), at most the
    number of head rows."""
    real = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    return min(real, head_rows(model))


class TokenTexts:
    """`tokenizer.decode([id])`, cached: a scored batch names the same few thousand tokens many times."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self.tokenizer.decode([token_id])
        return text


def split_by_tokens(seqs: list[list[int]], budget: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Indices of `seqs` in groups, longest first, each group's batch x longest <= budget (a sequence
    longer than the budget goes alone)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups and len(seqs[groups[-1][0]]) * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@torch.no_grad()
def score_batch(
    model, seqs: list[list[int]], *, k: int, vocab: int, texts: TokenTexts, chunk: int = CHUNK_POSITIONS
) -> list[Scored]:
    """Score `seqs` (each >= 1 token, ids < vocab) in one padded forward; see `Scored`."""
    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1
    hidden = final_hidden(model, ids.to(device), mask.to(device))  # [B, S, H]
    head = Head.of(model, trainable=False)
    out = []
    for b, s in enumerate(seqs):
        targets = ids[b, 1 : len(s)].to(device)  # position t - 1 predicts token t
        values, ranks, top_v, top_i = [], [], [], []
        for c in range(0, len(s) - 1, chunk):
            logp = torch.log_softmax(head.logits(hidden[b, c : min(c + chunk, len(s) - 1)], vocab), dim=-1)
            actual = logp.gather(1, targets[c : c + chunk, None])  # [n, 1]
            values.append(actual[:, 0].cpu())
            ranks.append(((logp > actual).sum(-1) + 1).cpu())
            if k > 0:
                v, i = logp.topk(min(k, vocab), dim=-1)
                top_v.append(v.cpu())
                top_i.append(i.cpu())
        n = len(s) - 1
        tv = _cat(top_v) if k > 0 else [[] for _ in range(n)]
        ti = _cat(top_i) if k > 0 else [[] for _ in range(n)]
        out.append(
            Scored(
                ids=list(s),
                tokens=[texts(t) for t in s],
                text=texts.tokenizer.decode(s),
                logprobs=_cat(values),
                ranks=_cat(ranks),
                top_ids=ti,
                top_logprobs=tv,
                top_tokens=[[texts(j) for j in row] for row in ti],
            )
        )
    return out


def _cat(parts: list[torch.Tensor]) -> list:
    return torch.cat(parts).tolist() if parts else []
