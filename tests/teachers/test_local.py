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


def _direct(teacher, prompt: str, max_new_tokens: int):
    """The figures the hard way, for one prompt alone: the chat template applied here, one greedy
    `model.generate`, and the answer cut after the first end-of-sequence token. Returns (prompt ids [1, P],
    the answer's token ids, its finish reason)."""
    tok, model = teacher.tokenizer, teacher.model
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = {tok.eos_token_id, *([eos] if isinstance(eos, int) else (eos or []))}
    end = next((t for t, i in enumerate(new) if i in eos), None)
    return ids, (new, "length") if end is None else (new[: end + 1], "stop")


def test_batched_greedy_equals_one_at_a_time(teacher):
    s = Sampling(max_new_tokens=8)
    batched = teacher.generate(_requests(s))
    single = LocalTeacher(teacher.model, teacher.tokenizer, name="tiny", batch_size=1).generate(_requests(s))
    assert [r.text for r in batched] == [r.text for r in single]
    # every answer equals a direct model.generate on its chat-formatted prompt: text, counts, finish
    tok = teacher.tokenizer
    for r, prompt in zip(batched, PROMPTS, strict=True):
        ids, (new, finish) = _direct(teacher, prompt, 8)
        direct = tok.decode(new, skip_special_tokens=True)
        assert (r.finish_reason, r.prompt_tokens, r.completion_tokens) == (finish, ids.shape[1], len(new))
        assert r.text == (direct if finish == "length" else direct.strip())


def test_length_finish_and_logprobs(teacher):
    import torch

    request = Request.chat([{"role": "user", "content": "Hello"}], Sampling(max_new_tokens=3, top_logprobs=4))
    [r] = teacher.generate([request])
    prompt, (new, finish) = _direct(teacher, "Hello", 3)
    assert (r.finish_reason, r.completion_tokens, len(r.logprobs)) == (finish, len(new), len(new))
    # Recompute every reported log-prob with one plain forward pass over prompt + generated tokens.
    tok, model = teacher.tokenizer, teacher.model
    generated = torch.tensor(new)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt[0], generated])[None]).logits[0].float()
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
