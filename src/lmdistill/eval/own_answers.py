"""How plausible the teacher finds what a model says: its log-likelihood of the model's own answers.

On-policy distillation optimises exactly this (the student samples, the teacher scores each sampled
token), and it is the metric that off-policy figures (KL on teacher text) cannot show: a student can
match the teacher on the teacher's text and still wander off when it writes its own. Per model:
greedy answers to held-out prompts, then the teacher scores each answer's tokens after the same
prompt (chat template, generation prompt). Reported as the mean log-prob per answer token in nats
(higher is better; the teacher's figure on its own greedy answers is the ceiling to compare with).

Answers are re-tokenized from their text (as a server or a reader would see them), so a model and
a teacher must share the tokenizer; `lmdistill eval` skips the metric with a note otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from lmdistill.data import IGNORE_INDEX
from lmdistill.data import pad_id as pad_id_of
from lmdistill.eval.scoring import score_tokens
from lmdistill.models.vocab import checked_vocab_size


@dataclass
class OwnAnswerScores:
    """logprob_per_token: the teacher's mean log-prob (nats) of the answer tokens, pooled over answers;
    tokens: answer tokens scored; answers: answers scored (empty answers count but add no tokens)."""

    logprob_per_token: float | None
    tokens: int
    answers: int

    def as_dict(self) -> dict:
        return asdict(self)


def answer_features(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], *, max_length: int = 1024
) -> list[dict]:
    """Training-shaped features (input_ids, labels, attention_mask) for prompt + answer, the prompt's
    labels masked. `prompts` are already rendered (chat template with the generation prompt); answer
    text is tokenized without special tokens. Rows are cut at `max_length` tokens (the answer's end)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts vs {len(answers)} answers")
    feats = []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        ids = (p + a)[:max_length]
        labels = ([IGNORE_INDEX] * len(p) + a)[:max_length]
        feats.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    return feats


@torch.no_grad()
def teacher_logprob_of_answers(
    teacher: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
) -> OwnAnswerScores:
    """The teacher's mean log-prob per token of `answers` [n] after `prompts` [n] (rendered prompts,
    see `answer_features`). Uses the same scoring loop as perplexity: log-prob per token = -log(ppl)."""
    feats = answer_features(tokenizer, prompts, answers, max_length=max_length)
    with_tokens = [f for f in feats if any(x != IGNORE_INDEX for x in f["labels"][1:])]
    if not with_tokens:
        return OwnAnswerScores(None, 0, len(answers))
    scores = score_tokens(
        teacher,
        with_tokens,
        vocab=checked_vocab_size(tokenizer, teacher),
        pad_token_id=pad_id_of(tokenizer),
        batch_size=batch_size,
    )
    return OwnAnswerScores(-math.log(scores.perplexity), scores.tokens, len(answers))
