"""LocalTeacher on a tiny real model: batching changes nothing, finish reasons, stop strings, logprobs."""

from __future__ import annotations

import pytest

from lmdistill.models import load_model, load_tokenizer
from lmdistill.teachers.local import LocalTeacher
from lmdistill.teachers.types import Request, Sampling

PROMPTS = ["Hello world", "The cat sat on the mat and", "What is the capital of France?", "Distillation"]


@pytest.fixture
def teacher(tiny_model_dirs):
    folder = tiny_model_dirs[0]
    return LocalTeacher(load_model(folder), load_tokenizer(folder), name="tiny", batch_size=3)


def _requests(sampling):
    return [Request.chat([{"role": "user", "content": p}], sampling) for p in PROMPTS]


def test_batched_greedy_equals_one_at_a_time(teacher):
    s = Sampling(max_new_tokens=8)
    batched = teacher.generate(_requests(s))
    single = LocalTeacher(teacher.model, teacher.tokenizer, name="tiny", batch_size=1).generate(_requests(s))
    assert [r.text for r in batched] == [r.text for r in single]
    for r in batched:
        assert r.finish_reason in ("stop", "length") and r.prompt_tokens > 0
        assert 0 < r.completion_tokens <= 8
    # the same answer as a direct model.generate on the chat-formatted prompt
    tok = teacher.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = teacher.model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    direct = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert batched[0].text == (direct if batched[0].finish_reason == "length" else direct.strip())


def test_length_finish_and_logprobs(teacher):
    import torch

    request = Request.chat([{"role": "user", "content": "Hello"}], Sampling(max_new_tokens=3, top_logprobs=4))
    [r] = teacher.generate([request])
    if r.finish_reason == "length":
        assert r.completion_tokens == 3
    assert len(r.logprobs) == r.completion_tokens
    # Recompute every reported log-prob with one plain forward pass over prompt + generated tokens.
    tok, model = teacher.tokenizer, teacher.model
    prompt = tok(teacher.prompt_text(request), return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    generated = out[0, prompt.shape[1] :][: r.completion_tokens]
    with torch.no_grad():
        logits = model(input_ids=out[:, : prompt.shape[1] + len(generated)]).logits[0].float()
    logp = torch.log_softmax(
        logits[prompt.shape[1] - 1 : -1], dim=-1
    )  # the distribution of each generated token
    for t, (entry, tid) in enumerate(zip(r.logprobs, generated.tolist(), strict=True)):
        assert entry["token"] == tok.decode([tid])
        assert entry["logprob"] == pytest.approx(logp[t, tid].item(), abs=1e-4)
        top = logp[t].topk(4)
        assert [a["token"] for a in entry["top"]] == [tok.decode([j]) for j in top.indices.tolist()]
        assert [a["logprob"] for a in entry["top"]] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_sampling_is_seeded_and_groups_do_not_mix(teacher):
    sampled = Sampling(max_new_tokens=6, temperature=1.0, seed=3)
    a = teacher.generate(_requests(sampled))
    b = teacher.generate(_requests(sampled))
    assert [r.text for r in a] == [r.text for r in b]
    mixed = _requests(Sampling(max_new_tokens=6)) + _requests(sampled)
    out = teacher.generate(mixed)
    assert [r.text for r in out[4:]] == [r.text for r in a]  # grouped by sampling: same batches as alone


def test_stop_strings_cut_the_text(teacher):
    [free] = teacher.generate(_requests(Sampling(max_new_tokens=12))[:1])
    assert len(free.text) >= 2, "the tiny model answers with at least two characters"
    stop = free.text[len(free.text) // 2]
    request = Request.chat(
        [{"role": "user", "content": PROMPTS[0]}], Sampling(max_new_tokens=12, stop=(stop,))
    )
    [cut] = teacher.generate([request])
    assert stop not in cut.text and cut.finish_reason == "stop"
    assert free.text.startswith(cut.text)
