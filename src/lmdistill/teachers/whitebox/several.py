"""Several teachers as ONE `TeacherSource`: the trainer asks it as it asks any teacher.

- route: each row of a query carries its teacher (`TeacherQuery.teacher_index`, from
  `lmdistill.teachers.routing`); each teacher is asked for its own rows only (`TeacherQuery.rows`), and
  the answers come back as `RoutedPart`s in the query's position order (`teacher_loss` takes them part
  by part). Any kind of source takes part: in process, a store, a server.
- mix / select: every teacher (in process) scores every row; the answer is one dense target whose head
  is a `MixedHead` (see `lmdistill.teachers.whitebox.mixture`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmdistill.teachers.whitebox.mixture import MixedHead, mixed_hidden, select_log_weights
from lmdistill.teachers.whitebox.source import RoutedPart, TeacherQuery, TeacherScores, TeacherSource


@dataclass
class Member:
    """One listed teacher: its id, its source (None until loaded; never loaded when no row or term needs
    it), its temperature T_i, its weight w_i (mix), whether a row or term needs it, and its
    cross-tokenizer method (None: it tokenizes as the student does; else its rows are scored by the
    cross-tokenizer step in its own tokenization, `lmdistill.training.xtok_routed_step`, never here)."""

    id: str
    source: TeacherSource | None
    temperature: float
    weight: float = 1.0
    needed: bool = True
    cross_tokenizer: str | None = None


class SeveralTeachers:
    """The listed teachers behind one `score`.

    members: in `teachers:` order (a row's teacher_index points into it); mode: route, mix or select;
    temperature: the run's distill.temperature (a member at another T_i says so in its parts or its
    mixture); vocab: the shared real vocabulary (select reads each head over it); chunk_size: rows per
    head pass when selecting.
    """

    def __init__(
        self, members: list[Member], mode: str, *, temperature: float, vocab: int, chunk_size: int = 256
    ):
        if mode not in ("route", "mix", "select"):
            raise ValueError(f"unknown mode {mode!r}")
        self.members, self.mode = members, mode
        self.temperature, self.vocab, self.chunk_size = temperature, vocab, chunk_size

    @property
    def name(self) -> str:
        """The loaded members (in-process ones load after construction) and the mode."""
        return f"teachers {', '.join(m.id for m in self.members if m.source is not None)} ({self.mode})"

    def to(self, device) -> SeveralTeachers:
        for m in self.members:
            if m.source is not None:
                m.source.to(device)
        return self

    def score(self, query: TeacherQuery) -> TeacherScores | None:
        if self.mode == "route":
            return self._route(query)
        return self._mix(query)

    def _route(self, query: TeacherQuery) -> TeacherScores:
        if query.teacher_index is None:
            raise ValueError("several teachers (routing.mode route) need each row's teacher_index")
        route = query.teacher_index.to(query.positions.device)
        if bool(((route < 0) | (route >= len(self.members))).any()):
            raise ValueError(f"a row's teacher_index is outside the {len(self.members)} listed teachers")
        counts = query.positions.sum(1)  # [B] scored positions per row
        row_of = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)  # [N]
        parts = []
        for i, member in enumerate(self.members):
            rows = (route == i).nonzero().flatten()
            if rows.numel() == 0:
                continue
            if member.source is None:
                raise ValueError(f"rows routed to teacher {member.id!r}, which was not loaded")
            if member.cross_tokenizer:  # its distributions are over another vocabulary
                raise ValueError(
                    f"rows routed to cross-tokenizer teacher {member.id!r} reached the routed loss; they "
                    "belong to its cross-tokenizer step"
                )
            tokens = (route[row_of] == i).nonzero().flatten()  # its rows' positions, in row-major order
            scores = member.source.score(query.rows(rows))
            parts.append(RoutedPart(tokens, scores, member.temperature))
        return TeacherScores(parts=tuple(parts))

    def _mix(self, query: TeacherQuery) -> TeacherScores:
        members = [
            m for m in self.members if m.source is not None and (self.mode == "select" or m.weight > 0)
        ]
        answers = [m.source.score(query) for m in members]  # in process: dense
        heads = [a.head for a in answers]
        hidden = [a.hidden for a in answers]
        temps = [m.temperature for m in members]
        n = hidden[0].shape[0]
        if self.mode == "mix":
            w = torch.tensor([m.weight for m in members], dtype=torch.float64)
            log_w = (w / w.sum()).log().float().to(hidden[0].device).expand(n, len(members))
        else:
            q = query.to(hidden[0].device)
            next_tokens = q.input_ids.roll(-1, dims=1)[q.positions]  # position t scores token t + 1
            log_w = select_log_weights(heads, hidden, temps, next_tokens, self.vocab, self.chunk_size)
        head = MixedHead(
            tuple(heads),
            tuple(h.shape[1] for h in hidden),
            tuple(h.dtype for h in hidden),
            tuple(temps),
            scale=self.temperature,
        )
        return TeacherScores(hidden=mixed_hidden(log_w, hidden), head=head)
