"""Speculative-decoding figures: acceptance math, block efficiency, assisted generation on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from lmdistill.chunked import Head
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


def test_assisted_generation_gives_the_targets_text(pair, tiny_tokenizer):
    target, draft = pair
    rep = assisted_speedup(target, draft, tiny_tokenizer, PROMPTS, max_new_tokens=12, draft_tokens=3)
    assert rep.prompts == 3 and rep.tokens == 36
    assert rep.identical == 3, rep.mismatches
    assert rep.speedup > 0
    assert draft.generation_config.num_assistant_tokens == 3  # a fixed draft length, not the heuristic


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


def test_fixed_length_latency(pair, tiny_tokenizer):
    target, _ = pair
    lat = fixed_length_latency(target, tiny_tokenizer, PROMPTS[:2], n=8)
    assert lat.n == 8 and lat.ttft_s > 0 and math.isfinite(lat.per_token_s) and lat.per_token_s > 0
    with pytest.raises(ValueError):
        fixed_length_latency(target, tiny_tokenizer, PROMPTS, n=1)
