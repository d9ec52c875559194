"""Speculative-decoding figures: acceptance math, block efficiency, assisted generation on tiny models."""

from __future__ import annotations

import pytest
import torch

from lmdistill.chunked import Head
from lmdistill.eval import speculative
from lmdistill.eval.scoring import ScoreSums
from lmdistill.eval.speculative import (
    AssistedRun,
    assisted_speedup,
    block_efficiency,
    fixed_length_latency,
    scores_on_own_greedy,
    summarise,
)
from tests.conftest import build_tiny_tokenizer, make_tiny_llama

PROMPTS = ["Hello world, how are", "The cat sat on", "What is the capital of"]


def test_acceptance_is_one_minus_tvd_by_hand():
    # Two positions through identity heads: hidden states are the logits themselves.
    p = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]])
    q = torch.tensor([[0.2, 0.3, 0.5], [0.25, 0.25, 0.5]])
    head = Head(torch.eye(3))
    sums = ScoreSums().add(head, q.log(), torch.tensor([0, 2]), 3, t_head=head, t_hidden=p.log())
    # row 1: sum min(p, q) = 0.2 + 0.3 + 0.2 = 0.7 (TVD 0.3); row 2: identical, 1.0
    assert sums.scores(with_teacher=True).acceptance == pytest.approx(0.85, abs=1e-6)


def test_block_efficiency_values():
    assert block_efficiency(0.5, 2) == pytest.approx((1 - 0.125) / 0.5)  # 1.75
    assert block_efficiency(0.8, 4) == pytest.approx(1 + 0.8 + 0.64 + 0.512 + 0.4096)
    assert block_efficiency(1.0, 5) == 6.0
    assert block_efficiency(0.0, 8) == 1.0
    with pytest.raises(ValueError):
        block_efficiency(1.2, 3)
    with pytest.raises(ValueError):
        block_efficiency(0.5, -1)


def test_summarise_on_fixed_timings():
    runs = [
        AssistedRun(10, 2.0, 1.0, True),
        AssistedRun(30, 6.0, 4.0, False),
        AssistedRun(20, 2.0, 1.0, True),
    ]
    rep = summarise(runs, draft_tokens=4)
    assert rep.tokens == 60
    assert rep.target_tokens_per_s == pytest.approx(60 / 10.0)
    assert rep.assisted_tokens_per_s == pytest.approx(60 / 6.0)
    assert rep.speedup == pytest.approx(10.0 / 6.0)
    assert rep.identical == 2 and rep.mismatches == [1]


@pytest.fixture
def pair(tiny_tokenizer):
    torch.manual_seed(0)
    target = make_tiny_llama(len(tiny_tokenizer), num_layers=3, seed=1).eval()
    draft = make_tiny_llama(len(tiny_tokenizer), num_layers=1, seed=2).eval()
    return target, draft


class ForwardClock:
    """A stand-in for `time.perf_counter` that moves only when a hooked model runs a forward: by a
    fixed cost per call plus a cost per input position (binary fractions, so sums are exact). Wall
    clock figures then become exact functions of the forwards a generation makes."""

    def __init__(self):
        self.now = 0.0
        self.handles = []

    def perf_counter(self) -> float:
        return self.now

    def charge(self, model, per_call: float, per_position: float = 0.0) -> ForwardClock:
        def pre_hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            positions = ids.shape[-1] if ids is not None else kwargs["inputs_embeds"].shape[-2]
            self.now += per_call + per_position * positions

        self.handles.append(model.register_forward_pre_hook(pre_hook, with_kwargs=True))
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def time(self, fn) -> float:
        start = self.now
        fn()
        return self.now - start


TARGET_CALL, TARGET_POSITION, DRAFT_CALL = 1.0, 0.125, 0.25


@pytest.fixture
def clock(monkeypatch, pair):
    """The speculative module's clock replaced by a ForwardClock charging both models of `pair`."""
    target, draft = pair
    fake = ForwardClock().charge(target, TARGET_CALL, TARGET_POSITION).charge(draft, DRAFT_CALL)
    monkeypatch.setattr(speculative, "time", fake)
    yield fake
    fake.remove()


def test_assisted_generation_gives_the_targets_text(pair, tiny_tokenizer, clock):
    target, draft = pair
    rep = assisted_speedup(target, draft, tiny_tokenizer, PROMPTS, max_new_tokens=12, draft_tokens=3)
    assert rep.prompts == 3 and rep.tokens == 36
    assert rep.identical == 3, rep.mismatches
    assert draft.generation_config.num_assistant_tokens == 3  # a fixed draft length, not the heuristic
    # The timings recomputed: alone, the target prefills the prompt's k tokens, then runs 11 one-token
    # steps for 12 tokens; assisted, whatever transformers' own assisted generate costs on the same clock.
    pad = tiny_tokenizer.pad_token_id
    alone = assisted = 0.0
    for prompt in PROMPTS:
        enc = tiny_tokenizer(prompt, return_tensors="pt")
        k = enc["input_ids"].shape[1]
        alone += (TARGET_CALL + TARGET_POSITION * k) + 11 * (TARGET_CALL + TARGET_POSITION)
        with torch.no_grad():
            assisted += clock.time(
                lambda enc=enc: target.generate(
                    **enc, assistant_model=draft, do_sample=False, max_new_tokens=12, pad_token_id=pad
                )
            )
    assert assisted != alone  # the two sides cost differently on this clock: a swap would show
    assert rep.target_tokens_per_s == pytest.approx(36 / alone, rel=1e-12)
    assert rep.assisted_tokens_per_s == pytest.approx(36 / assisted, rel=1e-12)
    assert rep.speedup == pytest.approx(alone / assisted, rel=1e-12)


def test_acceptance_of_a_model_with_itself_is_one_and_of_another_matches_direct(pair, tiny_tokenizer):
    target, draft = pair
    vocab = len(tiny_tokenizer)
    same = scores_on_own_greedy(target, target, tiny_tokenizer, PROMPTS, vocab=vocab, max_new_tokens=6)
    assert same.tokens == 18 and same.acceptance == pytest.approx(1.0, abs=1e-6) and same.top1 == 1.0
    own = scores_on_own_greedy(target, draft, tiny_tokenizer, PROMPTS[:1], vocab=vocab, max_new_tokens=6)
    alpha, n = own.acceptance, own.tokens
    enc = tiny_tokenizer(PROMPTS[0], return_tensors="pt")
    seq = draft.generate(**enc, do_sample=False, max_new_tokens=6, pad_token_id=tiny_tokenizer.pad_token_id)
    k = enc["input_ids"].shape[1]
    with torch.no_grad():
        p = torch.softmax(target(seq).logits[0, k - 1 : -1].double(), -1)
        q = torch.softmax(draft(seq).logits[0, k - 1 : -1].double(), -1)
    expected = (1 - 0.5 * (p - q).abs().sum(-1)).mean().item()
    assert n == 6 and alpha == pytest.approx(expected, abs=1e-5) and alpha < 0.999


def test_draft_with_another_tokenizer_uses_universal_assisted_generation(tmp_path, tiny_tokenizer, pair):
    target, _ = pair
    other_tok = build_tiny_tokenizer(tmp_path / "other", vocab_size=300)
    assert len(other_tok) != len(tiny_tokenizer)
    draft = make_tiny_llama(len(other_tok), num_layers=1, seed=3).eval()
    rep = assisted_speedup(
        target,
        draft,
        tiny_tokenizer,
        PROMPTS[:2],
        max_new_tokens=8,
        draft_tokens=2,
        draft_tokenizer=other_tok,
    )
    assert rep.prompts == 2 and rep.identical == 2, rep.mismatches


def test_fixed_length_latency(pair, tiny_tokenizer, clock):
    target, _ = pair
    lat = fixed_length_latency(target, tiny_tokenizer, PROMPTS, n=8)
    # On the forward clock: the first token costs one prefill of the prompt's k tokens; each further
    # token one forward over one new position. Medians over the three prompts.
    lengths = sorted(len(tiny_tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert len(set(lengths)) == 3  # three different prefill costs: the median picks the middle one
    assert lat.n == 8
    assert lat.ttft_s == TARGET_CALL + TARGET_POSITION * lengths[1]
    assert lat.per_token_s == TARGET_CALL + TARGET_POSITION
    with pytest.raises(ValueError):
        fixed_length_latency(target, tiny_tokenizer, PROMPTS, n=1)
