"""Teacher scoring over /v1/completions: token-id prompts, vLLM's prompt_logprobs, OpenAI-legacy echo.

Every value is checked against a direct in-process log_softmax of the same model (float32, T = 1).
"""

from __future__ import annotations

import threading

import httpx
import pytest
import torch

from lmdistill.serve import ServerThread, create_app
from tests.serve.conftest import MODEL_NAME

TEXTS = [
    "The cat sat on the mat and the dog slept by the door.",
    "Hello world",
    "What is the capital of France? The capital of France is Paris.",
]


def token_ids(teacher, text: str) -> list[int]:
    return teacher.tokenizer(text, add_special_tokens=False)["input_ids"]


def reference(teacher, ids: list[int]) -> torch.Tensor:
    """[n - 1, V] log-probs: row t - 1 is the distribution of token t given tokens < t."""
    with torch.no_grad():
        logits = teacher.model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def post(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/completions", json={"model": MODEL_NAME, **body}, timeout=60)


def check_prompt_logprobs(teacher, ids: list[int], entries: list, k: int) -> None:
    """vLLM's shape: one entry per token, the first None, then {id: {logprob, rank, decoded_token}}
    holding the actual token and the top k, all equal to the reference to 1e-5."""
    ref = reference(teacher, ids)
    assert len(entries) == len(ids)
    assert entries[0] is None
    for t in range(1, len(ids)):
        entry, row = entries[t], ref[t - 1]
        actual = ids[t]
        assert set(entry) <= {str(j) for j in range(row.shape[0])}  # keys are token ids as strings
        got = entry[str(actual)]
        assert got["logprob"] == pytest.approx(row[actual].item(), abs=1e-5)
        assert got["rank"] == 1 + int((row > row[actual]).sum())
        assert got["decoded_token"] == teacher.tokenizer.decode([actual])
        top_v, top_i = row.topk(k)
        for r, (v, j) in enumerate(zip(top_v.tolist(), top_i.tolist(), strict=True)):
            e = entry[str(j)]
            assert e["logprob"] == pytest.approx(v, abs=1e-5)
            assert e["rank"] == r + 1 or j == actual
            assert e["decoded_token"] == teacher.tokenizer.decode([j])
        in_top = actual in top_i.tolist()
        assert len(entry) == (k if in_top else k + 1)
        assert next(iter(entry)) == str(actual)  # the actual token first, as vLLM orders them


def test_prompt_logprobs_of_several_token_id_prompts_in_one_forward(app, server, teacher):
    seqs = [token_ids(teacher, t) for t in TEXTS]
    assert len({len(s) for s in seqs}) == 3  # different lengths: the batch is padded
    r = post(server, {"prompt": seqs, "prompt_logprobs": 5, "max_tokens": 0})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    for choice, ids in zip(out["choices"], seqs, strict=True):
        check_prompt_logprobs(teacher, ids, choice["prompt_logprobs"], 5)
        assert choice["text"] == ""
        assert choice["finish_reason"] == "length"
        assert choice["logprobs"] is None
    assert out["usage"] == {
        "prompt_tokens": sum(map(len, seqs)),
        "completion_tokens": 0,
        "total_tokens": sum(map(len, seqs)),
    }
    stats = app.state.stats.snapshot()
    assert (stats["scored"], stats["batches"], stats["largest_batch"]) == (3, 1, 3)  # one padded forward


def test_prompt_logprobs_of_one_id_list_and_of_a_text_prompt(server, teacher):
    ids = token_ids(teacher, TEXTS[0])
    r = post(server, {"prompt": ids, "prompt_logprobs": 2, "max_tokens": 0})
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    check_prompt_logprobs(teacher, ids, choice["prompt_logprobs"], 2)
    # a text prompt is tokenized as /v1/completions prompts always are (no special tokens)
    r = post(server, {"prompt": TEXTS[0], "prompt_logprobs": 0, "max_tokens": 0})
    (choice,) = r.json()["choices"]
    check_prompt_logprobs(teacher, ids, choice["prompt_logprobs"], 0)


def test_prompt_logprobs_with_generation_from_token_ids(server, teacher):
    """max_tokens >= 1 (what a client of vLLM sends): the prompt is scored and a completion generated
    from exactly the given ids."""
    ids = token_ids(teacher, TEXTS[1])
    r = post(server, {"prompt": ids, "prompt_logprobs": 3, "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    out = r.json()
    (choice,) = out["choices"]
    check_prompt_logprobs(teacher, ids, choice["prompt_logprobs"], 3)
    with torch.no_grad():
        gen = teacher.model.generate(
            torch.tensor([ids]),
            max_new_tokens=5,
            do_sample=False,
            pad_token_id=teacher.tokenizer.pad_token_id,
        )
    assert choice["text"] == teacher.tokenizer.decode(gen[0, len(ids) :], skip_special_tokens=True)
    assert out["usage"]["prompt_tokens"] == len(ids)
    assert out["usage"]["completion_tokens"] == gen.shape[1] - len(ids)


def test_echo_logprobs_max_tokens_0_the_legacy_form(client, teacher):
    """`echo: true, logprobs: k, max_tokens: 0` through the official openai client."""
    seqs = [token_ids(teacher, t) for t in TEXTS[:2]]
    out = client.completions.create(model=MODEL_NAME, prompt=seqs, echo=True, logprobs=3, max_tokens=0)
    for choice, ids in zip(out.choices, seqs, strict=True):
        ref = reference(teacher, ids)
        lp = choice.logprobs
        assert choice.text == teacher.tokenizer.decode(ids)
        assert lp.tokens == [teacher.tokenizer.decode([t]) for t in ids]
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        expected = [ref[t - 1, ids[t]].item() for t in range(1, len(ids))]
        assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-5)
        offsets = [0]
        for token in lp.tokens[:-1]:
            offsets.append(offsets[-1] + len(token))
        assert lp.text_offset == offsets
        for t in range(1, len(ids)):
            # keyed by token string: the actual token first, then the top 3; an id whose string is already
            # a key (byte-level tokens that decode to the same text) is dropped, which is why a client
            # that needs ids uses prompt_logprobs instead
            want = {lp.tokens[t]: expected[t - 1]}
            v, i = ref[t - 1].topk(3)
            for value, j in zip(v.tolist(), i.tolist(), strict=True):
                want.setdefault(teacher.tokenizer.decode([j]), value)
            top = lp.top_logprobs[t]
            assert list(top) == list(want)
            assert list(top.values()) == pytest.approx(list(want.values()), abs=1e-5)
    # a text prompt echoes itself verbatim
    out = client.completions.create(model=MODEL_NAME, prompt=TEXTS[1], echo=True, logprobs=1, max_tokens=0)
    assert out.choices[0].text == TEXTS[1]
    assert out.usage.prompt_tokens == len(seqs[1]) and out.usage.completion_tokens == 0


def test_echo_with_generation_joins_prompt_and_completion(server, teacher):
    ids = token_ids(teacher, TEXTS[1])
    out = post(server, {"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 3, "temperature": 0}).json()
    lp = out["choices"][0]["logprobs"]
    n = len(ids) + out["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == n
    assert out["choices"][0]["text"].startswith(teacher.tokenizer.decode(ids))
    assert lp["token_logprobs"][0] is None and all(v <= 0 for v in lp["token_logprobs"][1:])


def _error(r: httpx.Response) -> dict:
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_more_logprobs_than_the_cap_is_a_400_naming_the_flag(server, teacher):
    ids = token_ids(teacher, TEXTS[1])
    for body, param in (
        ({"prompt": ids, "prompt_logprobs": 21, "max_tokens": 0}, "prompt_logprobs"),
        ({"prompt": ids, "echo": True, "logprobs": 21, "max_tokens": 0}, "logprobs"),
    ):
        err = _error(post(server, body))
        assert err["param"] == param
        assert "--max-logprobs" in err["message"] and "20" in err["message"]
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21},
    )
    assert _error(r)["param"] == "top_logprobs"


def test_max_logprobs_raises_the_cap(teacher):
    app = create_app(teacher, model_name=MODEL_NAME, max_logprobs=30)
    ids = token_ids(teacher, TEXTS[1])
    with ServerThread(app) as server:
        r = post(server, {"prompt": ids, "prompt_logprobs": 30, "max_tokens": 0})
        assert r.status_code == 200, r.text
        check_prompt_logprobs(teacher, ids, r.json()["choices"][0]["prompt_logprobs"], 30)
        assert _error(post(server, {"prompt": ids, "prompt_logprobs": 31, "max_tokens": 0}))["param"] == (
            "prompt_logprobs"
        )


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": [5, 100000], "prompt_logprobs": 1, "max_tokens": 0},  # id out of vocabulary
        {"prompt": [5, -1], "prompt_logprobs": 1, "max_tokens": 0},
        {"prompt": [[5, 6], []], "prompt_logprobs": 1, "max_tokens": 0},  # an empty sequence
        {"prompt": [], "prompt_logprobs": 1, "max_tokens": 0},
        {"prompt": [5, "x"], "prompt_logprobs": 1, "max_tokens": 0},  # mixed
        {"prompt": [True, False], "prompt_logprobs": 1, "max_tokens": 0},  # booleans are not ids
        {"prompt": [5, 6.5], "prompt_logprobs": 1, "max_tokens": 0},
        {"prompt": {"ids": [5]}, "prompt_logprobs": 1, "max_tokens": 0},
        {"prompt": [5] * 300, "prompt_logprobs": 1, "max_tokens": 0},  # longer than the context (256)
        {"prompt": [5, 6], "prompt_logprobs": -1, "max_tokens": 0},
    ],
)
def test_bad_scoring_prompts_are_400(server, body):
    assert _error(post(server, body))["param"] in ("prompt", "prompt_logprobs")


def test_max_tokens_0_without_scoring_is_a_400(server):
    assert _error(post(server, {"prompt": "hi", "max_tokens": 0}))["param"] == "max_tokens"


def test_scoring_and_generation_at_once_stay_apart(app, server, teacher):
    """Scoring jobs and generation jobs arriving together never share a model call, and each gets the
    answer it would get alone."""
    seqs = [token_ids(teacher, t) for t in TEXTS]
    alone_gen = post(server, {"prompt": TEXTS[1], "max_tokens": 6, "temperature": 0}).json()["choices"][0][
        "text"
    ]
    results: dict = {}
    barrier = threading.Barrier(4)

    def score(i):
        barrier.wait(10)
        results[i] = post(server, {"prompt": seqs[i], "prompt_logprobs": 2, "max_tokens": 0}).json()

    def generate():
        barrier.wait(10)
        results["gen"] = post(server, {"prompt": TEXTS[1], "max_tokens": 6, "temperature": 0}).json()

    threads = [threading.Thread(target=score, args=(i,)) for i in range(3)] + [
        threading.Thread(target=generate)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(3):
        check_prompt_logprobs(teacher, seqs[i], results[i]["choices"][0]["prompt_logprobs"], 2)
    assert results["gen"]["choices"][0]["text"] == alone_gen
