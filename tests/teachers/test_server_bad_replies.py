"""A teacher server that misbehaves after a clean probe, driven through the real `lmdistill train` (and
`lmdistill capture`) against real loopback servers: every case stops with one line on stderr, exit code 2,
naming the server, the row and position, and what was wrong; nothing trained on it is saved."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmdistill.config import TeacherConfig
from lmdistill.errors import UserError
from lmdistill.models.vocab import real_vocab_size as real_vocab
from lmdistill.teachers.whitebox import ServerTeacher, TeacherQuery
from tests.conftest import cli_fails
from tests.teachers.scoringserver import ScoringServer
from tests.teachers.test_whitebox import _run_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_yaml(tmp_path, tiny_model_dirs, url, **teacher):
    teacher = {"name": str(tiny_model_dirs[0]), "server": url, "server_k": 4, **teacher}
    _run_yaml(tmp_path, teacher=teacher, student={"name": str(tiny_model_dirs[1])})
    return tmp_path / "run.yaml"


def _fails_in_one_line(argv, capsys, *match) -> str:
    """`lmdistill ARGV` exits 2 with one line on stderr holding `match`: no warning or log line besides it
    (progress bars of model loading aside). Returns that line."""
    err = cli_fails(argv, capsys, *match)
    lines = [line for line in err.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
    assert len(lines) == 1 and lines[0].startswith(f"lmdistill {argv[0]}: error: "), err
    return lines[0]


def _console_fails(argv, *match) -> str:
    """The installed `lmdistill ARGV` in its own process, as a user runs it (its log warnings reach stderr,
    which pytest's log capture hides in process): exit 2 and one line on stderr, progress bars aside,
    holding every `match`. Returns that line."""
    exe = Path(sys.executable).parent / "lmdistill"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(exe), *map(str, argv)], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"lmdistill {argv[0]}: error: "), done.stderr
    for m in match:
        assert m in lines[0], lines[0]
    return lines[0]


def _nothing_saved(out):
    assert not list(out.rglob("*.safetensors")) if out.exists() else True


# Each broken reply: what the server does to every position's {id: log-prob} after the probe, and
# what the one line must say. Unchecked, NaN skips every step and saves an untrained student (exit 0); all
# 0.0 is trained on (top-k mass 4 or 5 here); ids past the vocabulary put all the mass in the tail (exit 0);
# a string was a traceback.
BROKEN = {
    "nan": (lambda ids, j, pairs: dict.fromkeys(pairs, math.nan), ["is nan, not a finite number"]),
    "all_zero": (
        lambda ids, j, pairs: dict.fromkeys(pairs, 0.0),
        ["entries sum to", "above 1 (more than the 0.001 that rounding may add)"],
    ),
    "outside_vocab": (
        lambda ids, j, pairs: {i + 1000: lp for i, lp in pairs.items()},
        ["outside the vocabulary", "0..319"],
    ),
    "string": (lambda ids, j, pairs: dict.fromkeys(pairs, "n/a"), ["is the string 'n/a', not a number"]),
    "positive": (lambda ids, j, pairs: {**pairs, next(iter(pairs)): 0.5}, ["is 0.5, above 0"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_train_stops_on_a_broken_row_after_a_clean_probe(
    case, tiny_tokenizer, tiny_model_dirs, tmp_path, capsys
):
    mangle, match = BROKEN[case]
    with ScoringServer(tiny_tokenizer, mangle=mangle) as server:
        run_yaml = _train_yaml(tmp_path, tiny_model_dirs, server.url)
        err = _fails_in_one_line(
            ["train", run_yaml],
            capsys,
            f"teacher.server bigram-teacher at {server.url}",
            "returned a bad row for example ",  # training rows carry their index: the message names it
            "(batch row 0), position ",
            *match,
        )
    assert "Traceback" not in err
    _nothing_saved(tmp_path / "out")


def test_capture_stops_on_a_broken_row(tiny_tokenizer, tiny_model_dirs, tmp_path, capsys):
    from tests.teachers.test_whitebox import write_data

    data = write_data(tmp_path / "train.jsonl", 6)
    config = tmp_path / "capture.yaml"
    with ScoringServer(tiny_tokenizer, mangle=BROKEN["nan"][0]) as server:
        config.write_text(
            yaml.safe_dump(
                {
                    "teacher": {"name": str(tiny_model_dirs[0]), "server": server.url},
                    "data": {"train": str(data), "max_length": 40},
                    "capture": {"output_dir": str(tmp_path / "store"), "k": 4, "device": "cpu"},
                }
            )
        )
        _fails_in_one_line(
            ["capture", config],
            capsys,
            f"teacher.server bigram-teacher at {server.url}",
            "not a finite number",
        )
    _nothing_saved(tmp_path / "store")


# -- the same checks, one query at a time (no training) ---------------------------------------------


def _connect(server, tokenizer, k=4, **settings):
    return ServerTeacher.connect(
        TeacherConfig(server=server.url, **settings), tokenizer, k=k, vocab=real_vocab(tokenizer)
    )


def _query():
    import torch

    ids = torch.tensor([[5, 17, 40, 99, 120, 0], [7, 8, 9, 10, 11, 12]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 1:4] = True
    positions[1, [0, 2, 4]] = True
    return TeacherQuery(ids, attn, positions, example_index=torch.tensor([11, 3]))


def test_the_message_names_the_example_row_position_and_token(tiny_tokenizer):
    """Only row 1's third scored position (token 5 of the sequence, id 12) is broken."""

    def one_bad(ids, j, pairs):
        return {**pairs, 12: math.inf} if ids[: j + 1] == [7, 8, 9, 10, 11, 12] else pairs

    with ScoringServer(tiny_tokenizer, mangle=one_bad) as server:
        source = _connect(server, tiny_tokenizer)
        with pytest.raises(UserError) as info:
            source.score(_query())
    message = str(info.value)
    assert message == (
        f"teacher.server bigram-teacher at {server.url} returned a bad row for example 3 (batch row 1), "
        "position 4 (the scores of token 5 of 6): the log-prob of token id 12 is inf, not a finite number"
    )


def test_rounding_is_tolerated_and_order_does_not_matter(tiny_tokenizer):
    """A log-prob a hair above 0 (a token holding all the mass, in float32) is read as 0; a top-k mass a
    hair above 1 is accepted; entries in any order are sorted by log-prob, descending; -inf (a token that
    cannot occur) is read as the floor of the tail bucket."""
    import torch

    from lmdistill.chunked import TAIL_FLOOR

    with ScoringServer(tiny_tokenizer) as plain:
        want = _connect(plain, tiny_tokenizer).score(_query()).sparse

    def reorder(ids, j, pairs):
        return dict(reversed(list(pairs.items())))

    with ScoringServer(tiny_tokenizer, mangle=reorder) as server:
        got = _connect(server, tiny_tokenizer).score(_query()).sparse
    assert torch.equal(got.ids, want.ids) and torch.equal(got.logprobs, want.logprobs)
    assert (got.logprobs[:, :-1] >= got.logprobs[:, 1:]).all()

    def saturated(ids, j, pairs):  # one token holds all the mass, rounded up; the others cannot occur
        first = next(iter(pairs))
        return {i: (5e-6 if i == first else -math.inf) for i in pairs}

    with ScoringServer(tiny_tokenizer, mangle=saturated) as server:
        sparse = _connect(server, tiny_tokenizer).score(_query()).sparse
    assert (sparse.logprobs[:, 0] == 0).all() and (sparse.logprobs[:, 1:] == TAIL_FLOOR).all()
    assert (sparse.tail == TAIL_FLOOR).all()


def test_a_bad_probe_reply_stops_before_anything_loads(tiny_tokenizer):
    nan = BROKEN["nan"][0]
    with (
        ScoringServer(tiny_tokenizer, broken_after=0, mangle=nan) as server,
        pytest.raises(UserError) as info,
    ):
        _connect(server, tiny_tokenizer)
    assert (
        f"teacher.server bigram-teacher at {server.url} answered the probe with a bad row (position 0 of"
        in str(info.value)
    )
    assert "is nan, not a finite number" in str(info.value)


def test_echo_replies_are_checked_too(tiny_tokenizer):
    with ScoringServer(tiny_tokenizer, echo_only=True, mangle=BROKEN["all_zero"][0]) as server:
        source = _connect(server, tiny_tokenizer)
        with pytest.raises(
            UserError, match=r"returned a bad row for example 11 \(batch row 0\), position 1 "
        ):
            source.score(_query())


def test_a_log_prob_that_is_not_a_number_is_named(tiny_tokenizer):
    """Numbers in strings are refused too (a JSON number is what every server sends); null and lists."""
    for value, what in (("-1.5", "the string '-1.5'"), (None, "null"), ([-1.0], "list [-1.0]")):
        with ScoringServer(
            tiny_tokenizer, mangle=lambda ids, j, pairs, v=value: dict.fromkeys(pairs, v)
        ) as server:
            source = _connect(server, tiny_tokenizer)
            with pytest.raises(
                UserError, match=rf"the log-prob of token id \d+ is {re.escape(what)}, not a number$"
            ):
                source.score(_query())


# -- a server that fails after the probe ------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1])
def test_a_failing_server_is_one_line(retries, tiny_tokenizer, tiny_model_dirs, tmp_path):
    """Every scoring request of the first batch fails (500): one line, not a warning per request first."""
    with ScoringServer(tiny_tokenizer, fail_status=500) as server:
        run_yaml = _train_yaml(
            tmp_path, tiny_model_dirs, server.url, server_max_retries=retries, server_concurrency=4
        )
        line = _console_fails(
            ["train", run_yaml],
            f"teacher.server bigram-teacher at {server.url}: scoring a sequence failed: 500: the teacher is broken",
        )
    assert line.endswith("(gave up after 1 try)" if retries == 0 else "(gave up after 2 tries)"), line
    _nothing_saved(tmp_path / "out")


def test_a_broken_row_is_one_line_from_the_installed_command(tiny_tokenizer, tiny_model_dirs, tmp_path):
    """As a user runs it: no log line besides the error (in process, pytest's log capture would hide one)."""
    with ScoringServer(tiny_tokenizer, mangle=BROKEN["outside_vocab"][0]) as server:
        run_yaml = _train_yaml(tmp_path, tiny_model_dirs, server.url)
        _console_fails(
            ["train", run_yaml], f"teacher.server bigram-teacher at {server.url} returned a bad row"
        )
    _nothing_saved(tmp_path / "out")


# -- settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "capture"])
def test_credentials_in_the_server_url_name_the_server_keys(command, tiny_model_dirs, tmp_path, capsys):
    from tests.teachers.test_whitebox import write_data

    url = "http://user:sk-SENTINEL-url@127.0.0.1:9/v1"
    if command == "train":
        config = _train_yaml(tmp_path, tiny_model_dirs, url)
    else:
        config = tmp_path / "capture.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "teacher": {"name": str(tiny_model_dirs[0]), "server": url},
                    "data": {"train": str(write_data(tmp_path / "train.jsonl", 2))},
                    "capture": {"output_dir": str(tmp_path / "store"), "k": 4, "device": "cpu"},
                }
            )
        )
    line = _fails_in_one_line(
        [command, config],
        capsys,
        "teacher.server: 'http://***@127.0.0.1:9/v1' has a user name or password in it",
        "export it in the variable named by teacher.server_api_key_env",
    )
    assert "SENTINEL" not in line and "teacher.base_url" not in line and "teacher.api_key_env" not in line
    line = _fails_in_one_line([command, config, "teacher.server=127.0.0.1:8000/v1"], capsys)
    assert "teacher.server: '127.0.0.1:8000/v1' is not an http(s) URL" in line, line


def test_an_unset_server_key_variable_names_the_server_setting(monkeypatch):
    monkeypatch.delenv("LMD_NO_SUCH_KEY", raising=False)
    cfg = TeacherConfig(server="https://teacher.example.invalid/v1", server_api_key_env="LMD_NO_SUCH_KEY")
    with pytest.raises(UserError) as info:
        ServerTeacher.connect(cfg, None, k=4, vocab=320)
    message = str(info.value)
    assert "LMD_NO_SUCH_KEY is not set" in message and "teacher.server_api_key_env: null" in message, message


def test_a_real_server_with_a_smaller_vocabulary_is_named_so(tiny_model_dirs, tmp_path, capsys):
    """`lmdistill serve` with a 280-token teacher refuses the probe's ids above 279 (400): the line leads
    with the vocabulary, not with "answered neither prompt_logprobs nor echo"."""
    from lmdistill.models import load_model
    from lmdistill.serve import ServerThread, create_app
    from lmdistill.teachers.local import LocalTeacher
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    other = tmp_path / "other"
    tok = build_tiny_tokenizer(other, vocab_size=280)
    make_tiny_llama(len(tok), seed=3).save_pretrained(other)
    app = create_app(LocalTeacher(load_model(other), tok, name="other"), model_name="other")
    with ServerThread(app) as server:
        config = _train_yaml(tmp_path, tiny_model_dirs, server.url)
        line = _fails_in_one_line(["train", config], capsys)
    assert line.startswith(
        f"lmdistill train: error: teacher.server other at {server.url} does not use the student's vocabulary "
        f"({tiny_model_dirs[1]}): "
    ), line
    assert (
        "answered neither" not in line and "0..279). Serve a teacher with" in line and "320 tokens" in line
    ), line


def test_a_server_that_refuses_every_probe_is_not_blamed_on_the_vocabulary(tiny_tokenizer):
    """400 to every form, the lowest ids too: the old headline stands (and the ids were tried once more)."""
    with ScoringServer(tiny_tokenizer, broken_after=0, fail_status=400) as server:
        with pytest.raises(UserError, match="scored no token ids: it answered neither") as info:
            _connect(server, tiny_tokenizer)
        assert "vocabulary" not in str(info.value)
        assert [len(r["prompt"]) for r in server.requests] == [16] * 3 + [2] * 3


@pytest.mark.parametrize(
    ("shift", "why"),
    [
        (5.0, "above 0"),  # a log-normaliser above 0: values above 0
        (-30.0, "below -log("),  # far below 0: the most likely token under 1/V
    ],
)
def test_logits_instead_of_log_probs_are_refused_by_the_probe(tiny_tokenizer, shift, why):
    """vLLM with --logprobs-mode raw_logits or processed_logits returns logits (log-probs plus the
    position's log-normaliser) in prompt_logprobs: one line naming the flag, before anything loads."""

    def logits(ids, j, pairs):
        return {i: lp + shift for i, lp in pairs.items()}

    with (
        ScoringServer(tiny_tokenizer, broken_after=0, mangle=logits) as server,
        pytest.raises(UserError) as info,
    ):
        _connect(server, tiny_tokenizer)
    message = str(info.value)
    assert message.startswith(
        f"teacher.server bigram-teacher at {server.url} returns logits, not log-probs ("
    )
    assert why in message and "start it with --logprobs-mode raw_logprobs" in message


def test_log_probs_pass_the_mode_check(tiny_tokenizer):
    with ScoringServer(tiny_tokenizer) as server:
        assert _connect(server, tiny_tokenizer).logprob_mode == "log-probs"
