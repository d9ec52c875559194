"""Two teacher sources that answer from this machine: the teacher model itself, and an offline store."""

from __future__ import annotations

from typing import Protocol

import torch

from lmdistill.chunked import Head, SparseTeacher
from lmdistill.models.forward import final_hidden
from lmdistill.teachers.whitebox.source import TeacherQuery, TeacherScores


class InProcessTeacher:
    """The teacher model in this process: dense answers (final hidden states + head), no logits kept.

    `model` is frozen here (no grad, eval mode). Hint terms read its internal states too, so it is the
    one source that exposes `model`.
    """

    def __init__(self, model: torch.nn.Module, name: str | None = None):
        self.model = model.requires_grad_(False).eval()
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> InProcessTeacher:
        if self.device != torch.device(device):
            self.model.to(device)
        return self

    @torch.no_grad()
    def score(self, query: TeacherQuery) -> TeacherScores:
        q = query.to(self.device)
        return self.scores(final_hidden(self.model, q.input_ids, q.attention_mask), q.positions)

    def scores(self, final: torch.Tensor, positions: torch.Tensor) -> TeacherScores:
        """From final hidden states [B, S, H] already computed (the hint terms run the model themselves)."""
        return TeacherScores(hidden=final.detach()[positions], head=Head.of(self.model, trainable=False))


class StoredRows(Protocol):
    """What `StoreTeacher` reads: `lmdistill.capture.TeacherStore` (kept above this module)."""

    folder: object
    k: int
    vocab: int

    def rows(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]: ...


class StoreTeacher:
    """A teacher store from `lmdistill capture`: sparse answers looked up by the query's example_index.

    A query without example_index (held-out examples, never captured) gets None: CE only. The rows
    must line up with the query's positions, example by example (a ValueError says where they do not).
    """

    def __init__(self, store: StoredRows):
        self.store = store
        self.name = f"teacher store {store.folder}"
        self.k, self.vocab = store.k, store.vocab
        self.device = torch.device("cpu")

    def to(self, device) -> StoreTeacher:
        self.device = torch.device(device)
        return self

    def score(self, query: TeacherQuery) -> TeacherScores | None:
        if query.example_index is None:
            return None
        indices = [int(i) for i in query.example_index.tolist()]
        ids, logprobs, tail, counts = self.store.rows(indices)
        wanted = query.counts
        if counts != wanted:
            bad = next(i for i, (a, b) in enumerate(zip(counts, wanted, strict=True)) if a != b)
            raise ValueError(
                f"teacher store rows do not line up with the batch: example {indices[bad]} has {wanted[bad]} "
                f"target tokens but {counts[bad]} stored rows"
            )
        move = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        return TeacherScores(sparse=SparseTeacher(move(ids), move(logprobs), move(tail)))
