"""The server teacher over real loopback HTTP: against a scripted scoring server with faults (429 with
Retry-After, 5xx, short log-prob lists, a wrong vocabulary, no prompt_logprobs) and against a real
`lmdistill serve`, whose scores, captures and training losses equal the in-process teacher's."""

from __future__ import annotations

import json
import time

import pytest
import torch

from lmdistill.chunked import TAIL_FLOOR
from lmdistill.config import TeacherConfig
from lmdistill.errors import UserError
from lmdistill.models.vocab import real_vocab_size as real_vocab
from lmdistill.teachers.whitebox import InProcessTeacher, ServerTeacher, TeacherQuery, tail_from_topk
from lmdistill.teachers.whitebox.server_reply import ECHO, PROMPT_LOGPROBS
from tests.teachers.scoringserver import ScoringServer
from tests.teachers.test_whitebox import write_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _query():
    ids = torch.tensor([[5, 17, 40, 99, 120, 0, 0], [7, 8, 9, 10, 11, 12, 13]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 1:4] = True
    positions[1, [0, 2, 5]] = True
    return TeacherQuery(ids, attn, positions)


def _expected(server, query, k):
    """(ids [N, k], logprobs [N, k], tail [N]) from the server's bigram table, row-major."""
    ids, lps = [], []
    for b in range(query.input_ids.shape[0]):
        length = int(query.attention_mask[b].sum())
        rows = server.expected(query.input_ids[b, :length].tolist())
        for t in query.positions[b].nonzero().flatten().tolist():
            v, i = rows[t].topk(k)
            ids.append(i)
            lps.append(v)
    lps = torch.stack(lps)
    return torch.stack(ids), lps.float(), tail_from_topk(lps)


def _connect(server, tokenizer, k=4, **settings):
    return ServerTeacher.connect(
        TeacherConfig(server=server.url, **settings), tokenizer, k=k, vocab=real_vocab(tokenizer)
    )


def test_scores_are_the_servers_top_k_and_tail(tiny_tokenizer):
    with ScoringServer(tiny_tokenizer) as server:
        source = _connect(server, tiny_tokenizer, k=5)
        assert source.mode == PROMPT_LOGPROBS and source.name.startswith("bigram-teacher at http://127.0.0.1")
        query = _query()
        sparse = source.score(query).sparse
        ids, lps, tail = _expected(server, query, 5)
        assert torch.equal(sparse.ids, ids)
        torch.testing.assert_close(sparse.logprobs, lps, rtol=0, atol=1e-6)
        torch.testing.assert_close(sparse.tail, tail, rtol=0, atol=1e-6)
        sent = server.requests[-1]
        assert sent["prompt_logprobs"] == 5 and isinstance(sent["prompt"][0], int)  # token ids, not text
        assert sent["max_tokens"] == 1  # this server (like vLLM) refused 0 to the probe
        assert len(server.requests) == 2 + 2  # the probe's two tries, then one request per row


def test_429_with_retry_after_and_5xx_are_retried(tiny_tokenizer):
    with ScoringServer(tiny_tokenizer) as server:
        source = _connect(server, tiny_tokenizer, server_concurrency=1, server_max_retries=2)
        server.script(("429", 0.4), ("503",))
        start = time.monotonic()
        sparse = source.score(_query()).sparse
        assert time.monotonic() - start >= 0.4  # the Retry-After was obeyed
        assert torch.equal(sparse.ids, _expected(server, _query(), 4)[0])
        assert source.stats()["retries"] == 2
        server.script(*[("500",)] * 3)  # one more than the retries
        with pytest.raises(
            UserError, match=r"teacher\.server bigram-teacher at .* scoring a sequence failed: 500.* 3 tries"
        ):
            source.score(_query())


def test_fewer_log_probs_than_asked_name_the_flag(tiny_tokenizer):
    silent = r"asked \(it returned 3 .*--max-logprobs .*teacher\.server_k"
    with ScoringServer(tiny_tokenizer, short=3) as server, pytest.raises(UserError, match=silent):
        _connect(server, tiny_tokenizer, k=4)
    refused = r"the 32 log-probs per position asked .*vllm serve MODEL --max-logprobs 32"
    with ScoringServer(tiny_tokenizer, max_logprobs=20) as server, pytest.raises(UserError, match=refused):
        _connect(server, tiny_tokenizer, k=32)


def test_a_server_with_another_vocabulary_is_refused(tiny_tokenizer, tiny_tokenizer_dir):
    vocab = real_vocab(tiny_tokenizer)
    shifted = lambda i: tiny_tokenizer.decode([(i + 7) % vocab])  # noqa: E731
    with ScoringServer(tiny_tokenizer, text_of=shifted) as server, pytest.raises(UserError) as info:
        _connect(server, tiny_tokenizer)
    message = str(info.value)
    assert "bigram-teacher at http://127.0.0.1" in message and str(tiny_tokenizer_dir) in message
    assert "does not use the student's vocabulary" in message and "\n" not in message


def test_unreachable_server_is_one_clear_error(tiny_tokenizer):
    cfg = TeacherConfig(server="http://127.0.0.1:9/v1", server_max_retries=0, server_timeout=2.0)
    with pytest.raises(UserError, match=r"teacher\.server http://127.0.0.1:9/v1: could not list its models"):
        ServerTeacher.connect(cfg, tiny_tokenizer, k=4, vocab=real_vocab(tiny_tokenizer))


def test_echo_fallback_when_prompt_logprobs_is_refused(tiny_tokenizer):
    with ScoringServer(tiny_tokenizer, echo_only=True) as server:
        source = _connect(server, tiny_tokenizer)
        assert source.mode == ECHO
        query = _query()
        sparse = source.score(query).sparse
        sent = server.requests[-1]
        assert sent["echo"] is True and sent["logprobs"] == 4 and sent["max_tokens"] == 0
    ids, lps, _ = _expected(server, query, 4)
    full = torch.cat(
        [
            server.expected(query.input_ids[b, : int(query.attention_mask[b].sum())].tolist())[
                query.positions[b].nonzero().flatten()
            ]
            for b in range(2)
        ]
    )  # [N, V]
    _check_echo_rows(sparse, full, ids, lps, source.unmapped)


def _check_echo_rows(sparse, full, ids, lps, unmapped):
    """Every placed entry holds its token's true log-prob; pads hold TAIL_FLOOR; rows whose top-k texts
    all name one token each are the server's exactly."""
    placed = sparse.logprobs > TAIL_FLOOR
    assert (~placed).sum() == unmapped
    torch.testing.assert_close(
        sparse.logprobs[placed], full.gather(1, sparse.ids)[placed].float(), rtol=0, atol=1e-5
    )
    for n in [n for n in range(ids.shape[0]) if placed[n].all() and torch.equal(sparse.ids[n], ids[n])]:
        torch.testing.assert_close(sparse.logprobs[n], lps[n], rtol=0, atol=1e-5)
    assert torch.isfinite(sparse.tail).all() and (sparse.tail < 0).all()


# -- against a real `lmdistill serve` ------------------------------------------------------------------


def test_lmdistill_serve_scores_equal_the_in_process_teacher(served, tiny_tokenizer):
    url, model = served
    vocab = real_vocab(tiny_tokenizer)
    source = ServerTeacher.connect(TeacherConfig(server=url), tiny_tokenizer, k=8, vocab=vocab)
    assert source.mode == PROMPT_LOGPROBS and source.max_tokens == 0  # scoring only, nothing generated
    query = _query()
    got = source.score(query).topk(8, temperature=1.0, vocab=vocab)
    want = InProcessTeacher(model).score(query).topk(8, temperature=1.0, vocab=vocab)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=1e-5)
    source.mode = ECHO  # lmdistill serve answers the legacy form too
    echo = source.score(query).sparse
    dense = InProcessTeacher(model).score(query)
    full = torch.log_softmax(dense.head.logits(dense.hidden, vocab), -1)
    _check_echo_rows(echo, full, want[0], want[1], source.unmapped)


def _capture(teacher_dir, data, out, **teacher):
    from lmdistill.capture import capture, load_capture_config

    overrides = [f"teacher.name={teacher_dir}", f"data.train={data}", "data.max_length=40"]
    overrides += [f"capture.output_dir={out}", "capture.k=8", "capture.shard_size=4", "capture.codec=raw"]
    overrides += ["capture.device=cpu", "capture.batch_size=3"] + [
        f"teacher.{k}={v}" for k, v in teacher.items()
    ]
    return capture(load_capture_config(None, overrides), log=lambda _: None)


def test_capture_against_a_server_equals_capture_in_process(served, tiny_model_dirs, tmp_path):
    from lmdistill.capture import TeacherStore

    url, _ = served
    data = write_data(tmp_path / "train.jsonl", 9)
    _capture(tiny_model_dirs[0], data, tmp_path / "local")
    # teacher.name only names the tokenizer here: the server holds the weights
    _capture(tiny_model_dirs[0], data, tmp_path / "remote", server=url)
    local, remote = TeacherStore.open(tmp_path / "local"), TeacherStore.open(tmp_path / "remote")
    assert remote.manifest["teacher_hash"].startswith("server:")
    a, b = local.rows(list(range(9))), remote.rows(list(range(9)))
    assert a[3] == b[3] and torch.equal(a[0], b[0])
    torch.testing.assert_close(b[1], a[1], rtol=0, atol=2e-3)  # float16 log-probs in the raw codec
    torch.testing.assert_close(b[2], a[2], rtol=0, atol=1e-5)  # float32 tails


def test_training_from_a_server_equals_training_from_its_store(served, tiny_model_dirs, tmp_path):
    """First-step loss from the server equals the offline store's at the same k."""
    from lmdistill.training.run import run
    from tests.teachers.test_whitebox import _run_yaml

    url, _ = served
    data = write_data(tmp_path / "train.jsonl", 8)
    _capture(tiny_model_dirs[0], data, tmp_path / "captured", server=url)
    losses = {}
    for name, sections in {
        "server": {"teacher": {"name": str(tiny_model_dirs[0]), "server": url, "server_k": 8}},
        "store": {
            "teacher": {"name": str(tiny_model_dirs[0])},
            "distill": {"teacher_store": str(tmp_path / "captured")},
        },
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        sections.setdefault("distill", {}).update(kd_ratio=0.5)
        cfg = _run_yaml(folder, student={"name": str(tiny_model_dirs[1])}, **sections)
        cfg.data.train = str(data)
        cfg.train.max_steps = 1
        cfg.train.save_steps = 1
        lines = []
        run(cfg, log=lines.append)
        state = json.loads(next((folder / "out").glob("checkpoint-*/trainer_state.json")).read_text())
        losses[name] = next(h for h in state["log_history"] if "kd" in h)
        assert any("no teacher in memory" in line for line in lines)
    assert losses["server"]["kd"] > 0
    assert losses["server"]["kd"] == pytest.approx(losses["store"]["kd"], rel=1e-4)
    assert losses["server"]["loss"] == pytest.approx(losses["store"]["loss"], rel=1e-4)
