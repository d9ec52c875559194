"""The one scoring loop (perplexity, top-1 agreement, KL to the teacher) against hand-computed values.

These are the held-out figures every README table shows (`lmdistill train`'s eval.json, `lmdistill
eval`, the demo): first on logits small enough to work out on paper, then on real tiny models against
a float64 reference that keeps every logit.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lmdistill.chunked import Head
from lmdistill.eval.scoring import ScoreSums, score_tokens
from tests.conftest import float64_token_scores

LN2, LN3 = math.log(2), math.log(3)


def _identity_head() -> Head:
    """Logits = hidden for the 3 real tokens; a 4th (padding) head row that would win every argmax and
    swamp every softmax if the logits were not sliced to the real vocabulary."""
    return Head(torch.cat([torch.eye(3), torch.full((1, 3), 100.0)]))


@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_hand_computed_scores(chunk_size):
    # token A: model and teacher logits [ln 2, 0, 0] -> probs [1/2, 1/4, 1/4]; target 2:
    #   CE = -ln(1/4) = ln 4; both argmax 0 (agree); KL = 0.
    # token B: model logits [0, ln 3, 0] -> q = [1/5, 3/5, 1/5]; teacher [ln 2, 0, 0] -> p = [1/2, 1/4, 1/4];
    #   target 1: CE = -ln(3/5); argmax 1 vs 0 (disagree);
    #   KL(p || q) = 1/2 ln(5/2) + 1/4 ln(5/12) + 1/4 ln(5/4).
    hidden = torch.tensor([[LN2, 0.0, 0.0], [0.0, LN3, 0.0]])
    t_hidden = torch.tensor([[LN2, 0.0, 0.0], [LN2, 0.0, 0.0]])
    targets = torch.tensor([2, 1])
    head = _identity_head()

    sums = ScoreSums().add(head, hidden, targets, 3, t_head=head, t_hidden=t_hidden, chunk_size=chunk_size)
    scores = sums.scores(with_teacher=True)
    kl_b = 0.5 * math.log(5 / 2) + 0.25 * math.log(5 / 12) + 0.25 * math.log(5 / 4)
    assert scores.tokens == 2
    assert scores.top1 == 0.5
    assert scores.kl == pytest.approx(kl_b / 2, rel=1e-5)
    assert scores.perplexity == pytest.approx(math.sqrt(4 * 5 / 3), rel=1e-5)  # exp((ln 4 + ln 5/3) / 2)

    alone = ScoreSums().add(head, hidden, targets, 3, chunk_size=chunk_size).scores(with_teacher=False)
    assert alone.perplexity == pytest.approx(scores.perplexity, rel=1e-6)
    assert alone.top1 is None and alone.kl is None


def _features(tok, texts, prompt_tokens):
    """Features whose first `prompt_tokens` labels are masked (like a prompt), of different lengths."""
    feats = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        labels = [-100] * prompt_tokens + ids[prompt_tokens:]
        feats.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    return feats


def test_score_tokens_matches_float64_reference(tiny_tokenizer, tiny_llama):
    vocab = len(tiny_tokenizer)
    # heads padded past the real vocabulary, as Qwen's are: the extra rows must not count
    model = tiny_llama(vocab + 6, seed=3)
    teacher = copy.deepcopy(model).eval()  # the model, perturbed: they agree on some tokens, not all
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.5 * p.std())
    texts = [
        "The cat sat on the mat and the dog slept by the door.",
        "Hello world",
        "What is the capital of France? The capital of France is Paris.",
        "Alice has 3 apples and buys 2 more.",
    ]
    features = _features(tiny_tokenizer, texts, prompt_tokens=2)
    model.train()  # score_tokens must evaluate in eval mode and restore this

    scores = score_tokens(
        model, features, vocab=vocab, pad_token_id=0, teacher=teacher, batch_size=3, chunk_size=5
    )
    assert model.training and not teacher.training
    model.eval()
    ppl, top1, kl, tokens = float64_token_scores(model, teacher, features, vocab)
    assert scores.tokens == tokens == sum(len(f["input_ids"]) - 2 for f in features)
    assert scores.perplexity == pytest.approx(ppl, rel=1e-4)
    assert scores.top1 == pytest.approx(top1)
    assert scores.kl == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert 0.0 < scores.top1 < 1.0 and scores.kl > 1e-3  # a real comparison, not a degenerate one

    alone = score_tokens(model, features, vocab=vocab, pad_token_id=0, batch_size=1)
    assert alone.perplexity == pytest.approx(scores.perplexity, rel=1e-5) and alone.top1 is None

    itself = score_tokens(model, features, vocab=vocab, pad_token_id=0, teacher=model)
    assert itself.top1 == 1.0 and itself.kl == pytest.approx(0.0, abs=1e-6)
