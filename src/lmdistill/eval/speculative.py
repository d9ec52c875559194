"""Speculative decoding with a distilled draft: acceptance, tokens per target call, real speedup.

A draft q proposes gamma tokens; the target p verifies them in one forward. Under speculative
sampling a proposed token is accepted with probability sum_x min(p(x), q(x)) = 1 - TVD(p, q), so the
per-token acceptance rate is alpha = 1 - E[TVD(p, q)] (Leviathan et al. 2023; DistillSpec). The
expected number of tokens one target call yields (block efficiency) is (1 - alpha^(gamma+1)) /
(1 - alpha). Under greedy verification a token is accepted when the draft's argmax equals the
target's, so the greedy acceptance is top-1 agreement.

The wall-clock figure is measured, not predicted: transformers' assisted generation
(`generate(..., assistant_model=draft)`), greedy, against the target alone on the same prompts,
interleaved prompt by prompt in one run so both see the same machine load. Greedy assisted
generation must reproduce the target's text exactly; any difference is reported as a failure.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from lmdistill.chunked import Head
from lmdistill.eval.scoring import ScoreSums, TokenScores
from lmdistill.models.forward import final_hidden

DRAFT_LENGTHS = tuple(range(1, 9))  # draft lengths gamma the reports tabulate


def block_efficiency(alpha: float, gamma: int) -> float:
    """Expected tokens per target call with draft length `gamma` and per-token acceptance `alpha`.

    (1 - alpha^(gamma+1)) / (1 - alpha); gamma + 1 when every draft token is accepted (alpha = 1),
    1 when none is (alpha = 0): the target's own token is always produced.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


@torch.no_grad()
def scores_on_own_greedy(
    target, draft, tokenizer, prompts: list[str], *, vocab: int, max_new_tokens: int = 32
) -> TokenScores:
    """The draft scored against the target on the tokens it generates greedily itself after each
    prompt (the states a draft meets when it drafts), both teacher-forced on that continuation:
    `.acceptance` is alpha there, `.top1` the greedy acceptance (draft argmax == target argmax)."""
    device = next(draft.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    t_head, d_head = Head.of(target, trainable=False), Head.of(draft, trainable=False)
    sums = ScoreSums()
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(device)
        n = enc["input_ids"].shape[1]
        seq = draft.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
        if seq.shape[1] <= n:
            continue
        mask = torch.ones_like(seq)
        # position t predicts token t + 1: the generated tokens n.. are predicted at n-1..end-1
        d_h = final_hidden(draft, seq, mask)[0, n - 1 : -1]
        t_h = final_hidden(target, seq, mask)[0, n - 1 : -1]
        sums.add(d_head, d_h, seq[0, n:], vocab, t_head=t_head, t_hidden=t_h)
    return sums.scores(with_teacher=True)


@dataclass
class AssistedRun:
    """One prompt, generated greedily by the target alone and with the draft's help.

    Times in seconds (wall clock); tokens = new tokens the target alone produced."""

    tokens: int
    target_s: float
    assisted_s: float
    identical: bool


@dataclass
class SpeedupReport:
    """Assisted generation against the target alone over the same prompts (sums over prompts)."""

    draft_tokens: int
    prompts: int
    tokens: int
    target_tokens_per_s: float
    assisted_tokens_per_s: float
    speedup: float
    identical: int
    mismatches: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(runs: list[AssistedRun], draft_tokens: int) -> SpeedupReport:
    """Totals over prompts: tokens/s of each side = total tokens / total seconds; speedup = their
    ratio (= target seconds / assisted seconds, since both produce the same tokens)."""
    tokens = sum(r.tokens for r in runs)
    t = sum(r.target_s for r in runs)
    a = sum(r.assisted_s for r in runs)
    return SpeedupReport(
        draft_tokens=draft_tokens,
        prompts=len(runs),
        tokens=tokens,
        target_tokens_per_s=tokens / t if t > 0 else 0.0,
        assisted_tokens_per_s=tokens / a if a > 0 else 0.0,
        speedup=t / a if a > 0 else 0.0,
        identical=sum(r.identical for r in runs),
        mismatches=[i for i, r in enumerate(runs) if not r.identical],
    )


def _configure_draft(draft, draft_tokens: int) -> None:
    """A fixed draft length: transformers' default schedule changes it between calls ("heuristic",
    persistent across calls) and stops early below a confidence threshold, which would make runs of
    one benchmark differ in what they measure."""
    gc = draft.generation_config
    gc.num_assistant_tokens = draft_tokens
    gc.num_assistant_tokens_schedule = "constant"
    gc.assistant_confidence_threshold = 0.0


@torch.no_grad()
def assisted_speedup(
    target,
    draft,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 32,
    draft_tokens: int = 4,
    draft_tokenizer=None,
) -> SpeedupReport:
    """Greedy generation of each prompt by `target` alone and with `draft` as its assistant,
    alternating per prompt (which goes first alternates too), one prompt at a time (assisted
    generation takes batch size 1), after one untimed warm-up of each. With `draft_tokenizer` (a draft of another tokenizer),
    transformers' universal assisted generation is used.

    Returns the totals; `identical` counts prompts whose assisted text equals the target's.
    """
    _configure_draft(draft, draft_tokens)
    device = next(target.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    common = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    extra = {"tokenizer": tokenizer, "assistant_tokenizer": draft_tokenizer} if draft_tokenizer else {}
    if prompts:  # untimed: the first generate call of each kind pays one-time setup costs
        enc = tokenizer(prompts[0], return_tensors="pt").to(device)
        warm = dict(common, max_new_tokens=min(4, max_new_tokens))
        target.generate(**enc, **warm)
        target.generate(**enc, assistant_model=draft, **warm, **extra)
    runs = []
    for i, prompt in enumerate(prompts):
        enc = tokenizer(prompt, return_tensors="pt").to(device)

        def alone(enc=enc):
            return target.generate(**enc, **common)

        def helped(enc=enc):
            return target.generate(**enc, assistant_model=draft, **common, **extra)

        order = [("target", alone), ("assisted", helped)]
        if i % 2:
            order.reverse()
        out, secs = {}, {}
        for name, fn in order:
            start = time.perf_counter()
            out[name] = fn()
            secs[name] = time.perf_counter() - start
        n = enc["input_ids"].shape[1]
        a, b = out["target"][0, n:].tolist(), out["assisted"][0, n:].tolist()
        runs.append(AssistedRun(len(a), secs["target"], secs["assisted"], a == b))
    return summarise(runs, draft_tokens)


@dataclass
class FixedLengthLatency:
    """Latency at a fixed output length, comparable between models that stop at different lengths.

    ttft_s: median seconds to the first new token (prefill + one step); per_token_s: median seconds
    per further token, (time for n tokens - time for 1) / (n - 1); n: the fixed output length."""

    n: int
    ttft_s: float
    per_token_s: float

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def fixed_length_latency(model, tokenizer, prompts: list[str], *, n: int = 32) -> FixedLengthLatency:
    """Greedy generation of exactly `n` tokens per prompt (EOS ignored: min_new_tokens = n), one
    prompt at a time, and of exactly 1 token, after one untimed warm-up; medians over prompts."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    first, per = [], []
    if prompts:  # untimed warm-up
        enc = tokenizer(prompts[0], return_tensors="pt").to(device)
        model.generate(**enc, do_sample=False, max_new_tokens=2, min_new_tokens=2, pad_token_id=pad)
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(device)
        times = {}
        for length in (1, n):
            start = time.perf_counter()
            model.generate(
                **enc, do_sample=False, max_new_tokens=length, min_new_tokens=length, pad_token_id=pad
            )
            times[length] = time.perf_counter() - start
        first.append(times[1])
        per.append(max(times[n] - times[1], 0.0) / (n - 1))
    return FixedLengthLatency(n=n, ttft_s=statistics.median(first), per_token_s=statistics.median(per))
