"""The white-box teacher interface: a query of token ids and positions in, what the loss needs out.

Every white-box path (the trainer's KD term, `lmdistill capture`) asks a `TeacherSource`:

    scores = source.score(TeacherQuery(input_ids, attention_mask, positions))   # -> TeacherScores
    chunked_loss(s_hidden, s_head, labels, spec, **scores.loss_inputs())

and never looks at what kind of source answered. A source answers in one of two forms:
- dense: the teacher's final hidden states at the positions plus its output `Head`, so the chunked
  loss computes full distributions a chunk of tokens at a time (the in-process model);
- sparse: per position the k most likely token ids, their log-probs and the log of the rest (the
  "tail"), a `SparseTeacher` (an offline store, a server). The loss is then the same divergence over
  k + 1 buckets (see `lmdistill.chunked`).

Positions: position t of row b is scored when positions[b, t] is True; it is the teacher's
distribution of token t + 1 given tokens 0..t. Every result lists the scored positions in row-major
order (the order of `tensor[positions]`), which is the trainer's `final[:, :-1][mask]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from lmdistill.chunked import TAIL_FLOOR, Head, SparseTeacher


@dataclass(frozen=True)
class TeacherQuery:
    """What a teacher scores: right-padded token ids and the positions whose next token it predicts.

    input_ids, attention_mask: [B, S] (1 = real token); positions: bool [B, S], False on padding and
    on each row's last real token; example_index: int64 [B], each row's index in the training data
    (what an offline store looks rows up by), or None when the rows are not training examples;
    teacher_index: int64 [B], each row's teacher in `teachers:` (routing), or None with one teacher.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    example_index: torch.Tensor | None = None
    teacher_index: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, batch: dict) -> TeacherQuery:
        """From a `DistillCollator` batch: the positions are the target tokens (labels[:, 1:] != -100)."""
        ids = batch["input_ids"]
        positions = torch.zeros_like(ids, dtype=torch.bool)
        positions[:, :-1] = batch["labels"][:, 1:] != -100
        return cls(
            ids, batch["attention_mask"], positions, batch.get("example_index"), batch.get("teacher_index")
        )

    def to(self, device: torch.device | str) -> TeacherQuery:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TeacherQuery(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.positions),
            move(self.example_index),
            move(self.teacher_index),
        )

    def rows(self, rows: torch.Tensor) -> TeacherQuery:
        """The query of some rows only (int64 [b] row indices, in order): what one teacher of several is
        asked. Its scored positions are those rows' positions, in the same row-major order."""
        pick = lambda t: None if t is None else t[rows.to(t.device)]  # noqa: E731
        return TeacherQuery(
            pick(self.input_ids),
            pick(self.attention_mask),
            pick(self.positions),
            pick(self.example_index),
            pick(self.teacher_index),
        )

    @property
    def counts(self) -> list[int]:
        """Scored positions per row."""
        return self.positions.sum(1).tolist()


@dataclass(frozen=True)
class RoutedPart:
    """Some of a query's N scored positions and the answer of the one teacher they were routed to.

    tokens: int64 [n] indices into the N positions (ascending); scores: that teacher's answer for them,
    or None (it holds nothing for these rows: CE only); temperature: the T of that teacher's KD term, or
    None for the run's (`lmdistill.teachers.whitebox.routed_loss.teacher_loss`).
    """

    tokens: torch.Tensor
    scores: TeacherScores | None
    temperature: float | None = None


@dataclass(frozen=True)
class TeacherScores:
    """A teacher's answer for the N scored positions of a query: dense, sparse or routed, one of them.

    hidden: [N, H_t] final hidden states and head: their output `Head` (dense); or sparse: a
    `SparseTeacher` with [N, k] ids and log-probs and [N] tail log-masses; or parts: several teachers
    each answering the positions routed to it (`RoutedPart`, the loss takes them one by one).
    target_logprobs: optional float32 [N], the log-prob of each position's actual next token where a
    sparse source knows it (a server's reply holds it beside the top k; NaN where it did not).
    """

    hidden: torch.Tensor | None = None
    head: Head | None = None
    sparse: SparseTeacher | None = None
    target_logprobs: torch.Tensor | None = None
    parts: tuple[RoutedPart, ...] | None = None

    def __post_init__(self):
        forms = (self.hidden is not None) + (self.sparse is not None) + (self.parts is not None)
        if forms != 1 or (self.hidden is None) != (self.head is None):
            raise ValueError(
                "TeacherScores holds hidden states with their head, a sparse top-k, or routed parts: one of them"
            )

    @property
    def rows(self) -> int:
        if self.parts is not None:
            return sum(int(p.tokens.shape[0]) for p in self.parts)
        return int(self.hidden.shape[0] if self.hidden is not None else self.sparse.ids.shape[0])

    def loss_inputs(self) -> dict:
        """Keyword arguments for `chunked_loss` / `full_logits_loss`: t_hidden, t_head, t_sparse."""
        if self.parts is not None:
            raise ValueError("routed scores are several teachers' answers: use teacher_loss, part by part")
        return {"t_hidden": self.hidden, "t_head": self.head, "t_sparse": self.sparse}

    def topk(
        self, k: int, *, temperature: float, vocab: int, chunk_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids int64 [N, k], log-probs float32 [N, k] sorted descending, tail float32 [N]) on CPU.

        Dense: from the full distribution at `temperature` (`topk_rows`). Sparse: the rows as they
        came, which must hold k entries (a server scores at temperature 1; its caller checks that).
        """
        if self.parts is not None:
            raise ValueError("top-k of routed scores: capture each teacher apart (one store per teacher)")
        if self.hidden is not None:
            return topk_rows(
                self.head, self.hidden, k=k, temperature=temperature, vocab=vocab, chunk_size=chunk_size
            )
        s = self.sparse
        if s.ids.shape[1] != k:
            raise ValueError(f"the teacher returned top-{s.ids.shape[1]} rows, {k} were asked")
        return s.ids.long().cpu(), s.logprobs.float().cpu(), s.tail.float().cpu()


class TeacherSource(Protocol):
    """A white-box teacher. `name` says what it is in logs; `to(device)` puts it (and its answers) on a
    device; `score` answers a query, or returns None when it holds nothing for these rows (an offline
    store asked about held-out examples): the loss is then CE only."""

    name: str

    def to(self, device: torch.device | str) -> TeacherSource: ...

    def score(self, query: TeacherQuery) -> TeacherScores | None: ...


@torch.no_grad()
def topk_rows(
    head: Head, hidden: torch.Tensor, *, k: int, temperature: float, vocab: int, chunk_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, H] teacher final hidden states -> (ids int64 [N, k], logprobs float32 [N, k], tail float32 [N]) on CPU.

    log_softmax(logits / T) in float32 over the first `vocab` logits, `chunk_size` rows at a time;
    values sorted descending.
    """
    ids, values, tails = [], [], []
    for c in range(0, hidden.shape[0], chunk_size):
        logp = torch.log_softmax(head.logits(hidden[c : c + chunk_size], vocab) / temperature, dim=-1)
        v, i = logp.topk(k, dim=-1)  # [n, k]
        # With the whole distribution at hand the tail is summed over the tokens outside the k (exact).
        tail = logp.scatter(1, i, float("-inf")).logsumexp(-1).clamp(min=TAIL_FLOOR)
        ids.append(i.cpu())
        values.append(v.cpu())
        tails.append(tail.cpu())
    if not ids:
        empty = torch.zeros((0, k))
        return empty.long(), empty, torch.zeros(0)
    return torch.cat(ids), torch.cat(values), torch.cat(tails)


def tail_from_topk(logprobs: torch.Tensor) -> torch.Tensor:
    """[N, k] top-k log-probs (all a server returns) -> [N] float32 log(1 - sum_k p), floored at TAIL_FLOOR.

    Summed in float64: the top-k often hold all but 1e-6 of the mass, where float32 would cancel. A sum
    that rounds to 1 or above gives the floor (as `topk_rows` does when the k tokens hold all the mass).
    """
    lse = torch.logsumexp(logprobs.double(), dim=-1)
    rest = (-torch.expm1(lse)).clamp(min=math.exp(TAIL_FLOOR))
    return rest.log().clamp(min=TAIL_FLOOR).float()
