"""Batched generation for the server: token-id prompts in, `Response`s out, with a hook on every step.

`generate_ids` is `LocalTeacher`'s batched generation (left padding, the same decoding settings, the
same `Response` via `teacher.response`) taking token ids instead of text, so a client that sends ids
gets exactly those ids as the prompt, and a text prompt is tokenized once, on the worker. Its `rows`
give each batch row its own length limit and two per-step callbacks, run as a Hugging Face stopping
criterion after every new token: `abandoned()` (the client went away: the row stops at once, and a
batch whose rows are all abandoned ends) and `step(ids)` (the row's new tokens so far, for
streaming). Per-row limits let requests that differ only in max_tokens share a batch: a row stops at
its own limit and its answer is cut there, exactly what it would be with that max_new_tokens.

`TextStream` turns a row's growing token ids into text deltas that never have to be taken back: it
holds back an incomplete UTF-8 character, trailing whitespace and anything that could still become a
stop string, and stops at the first stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from lmdistill.models.generation import generate_kwargs
from lmdistill.teachers.types import Response, Sampling


@dataclass
class Row:
    """One batch row: its own max_new_tokens (None: the batch's) and per-step callbacks (optional)."""

    limit: int | None = None
    abandoned: Callable[[], bool] | None = None
    step: Callable[[list[int]], None] | None = None


class _StepHook(StoppingCriteria):
    """Called by `generate` after every token: streams new tokens and stops abandoned rows."""

    def __init__(self, rows: Sequence[Row], width: int):
        self.rows = rows
        self.width = width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.width
        stop = [
            bool(r.abandoned and r.abandoned()) or (r.limit is not None and n >= r.limit) for r in self.rows
        ]
        streaming = [b for b, r in enumerate(self.rows) if r.step is not None and not stop[b]]
        if streaming:
            new = input_ids[streaming, self.width :].tolist()
            for b, ids in zip(streaming, new, strict=True):
                self.rows[b].step(ids)
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)


def eos_ids(teacher) -> set[int]:
    """The ids that end a completion: the tokenizer's EOS and the generation config's."""
    gen_eos = getattr(teacher.model.generation_config, "eos_token_id", None)
    ids = {teacher.tokenizer.eos_token_id, *([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))}
    return {i for i in ids if i is not None}


@torch.no_grad()
def generate_ids(
    teacher, seqs: list[list[int]], s: Sampling, rows: Sequence[Row] | None = None
) -> tuple[list[Response], list[list[int]]]:
    """Generate from token-id prompts in one batch, at most `s.max_new_tokens` each (or a row's own
    smaller `limit`); returns the responses and each row's raw new ids, cut at its limit (padding
    included; `TextStream.final` reads them)."""
    tok, model = teacher.tokenizer, teacher.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, x in enumerate(seqs):
        ids[b, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[b, width - len(x) :] = 1
    device = next(model.parameters()).device
    kwargs = generate_kwargs(tok, s)  # the local teacher's settings; seeds torch when sampled and seeded
    if rows is not None and any(r.abandoned or r.step or r.limit is not None for r in rows):
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StepHook(rows, width)])
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    new = out.sequences[:, width:]
    logits = torch.stack(out.logits, dim=1) if s.top_logprobs > 0 else None
    responses, raw = [], []
    for b in range(len(seqs)):
        limit = s.max_new_tokens
        if rows is not None and rows[b].limit is not None:
            limit = min(limit, rows[b].limit)
        row_s = replace(s, max_new_tokens=limit)
        row_logits = None if logits is None else logits[b, :limit]
        responses.append(teacher.response(new[b, :limit], len(seqs[b]), row_s, row_logits))
        raw.append(new[b, :limit].tolist())
    return responses, raw


class TextStream:
    """Text deltas of one row as its tokens arrive. `update(ids)` returns the text that is now safe to
    send (possibly ""); `final(ids)` the rest. The concatenated deltas equal the completion decoded up to
    its end token and cut at its first stop string, without `LocalTeacher`'s whitespace strip (which a
    stream cannot know in advance: the non-streamed text of an answer that ended by itself is stripped)."""

    def __init__(self, tokenizer, stops: Sequence[str], eos: set[int]):
        self.tokenizer = tokenizer
        self.stops = [x for x in stops if x]
        self.eos = eos
        self.sent = ""
        self.done = False

    def _text(self, ids: list[int]) -> tuple[str, bool]:
        """The completion text of `ids` and whether it has ended (end token or stop string)."""
        ended = False
        for t, tid in enumerate(ids):
            if tid in self.eos:
                ids, ended = ids[:t], True
                break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cuts = [c for c in (text.find(x) for x in self.stops) if c >= 0]
        if cuts:
            return text[: min(cuts)], True
        return text, ended

    def _emit(self, safe: str) -> str:
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""  # decoding is not prefix-stable here; wait for more tokens (or the end)
        delta, self.sent = safe[len(self.sent) :], safe
        return delta

    def update(self, ids: list[int]) -> str:
        if self.done:
            return ""
        text, ended = self._text(ids)
        if ended:
            return ""  # the end is sent by final(), which knows the whole text
        safe = text.rstrip("\ufffd")  # an incomplete UTF-8 character
        safe = safe.rstrip()  # trailing whitespace may still be stripped (or end up inside a stop string)
        if self.stops:  # a stop string may be starting at the end of the text: hold back its length - 1
            hold = max(len(x) for x in self.stops) - 1
            safe = safe[: max(0, len(text) - hold)] if hold > 0 else safe
        return self._emit(safe)

    def final(self, ids: list[int]) -> str:
        """The rest of the text (call once, with all the row's new ids)."""
        self.done = True
        text, _ = self._text(ids)
        if not text.startswith(self.sent):  # cannot happen unless decoding changed earlier text
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
