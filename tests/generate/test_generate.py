"""`lmdistill generate` end to end against a real OpenAI-compatible server on loopback (scripted
answers, real HTTP, real `openai` client), and once with a local Hugging Face model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmdistill.cli import main
from lmdistill.errors import UserError
from lmdistill.generate import load_generate_config, run_generate
from lmdistill.teachers.api import ApiTeacher
from tests.teachers.faultserver import FaultServer


@pytest.fixture
def server():
    with FaultServer() as s:
        yield s


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _config(tmp_path, server, mode, rows, *overrides):
    src = _write(tmp_path / "in.jsonl", rows)
    return load_generate_config(
        None,
        [
            f"mode={mode}",
            f"input={src}",
            f"output={tmp_path / 'out.jsonl'}",
            "teacher.backend=api",
            "teacher.name=fake",
            f"teacher.base_url={server.url}",
            "teacher.api_key_env=null",
            "teacher.concurrency=1",
            "teacher.max_retries=1",
            *overrides,
        ],
    )


def _run(cfg):
    teacher = ApiTeacher(
        cfg.teacher.name, base_url=cfg.teacher.base_url, api_key_env=None, concurrency=1, max_retries=1
    )
    return run_generate(cfg, teacher=teacher, log=lambda *_: None)


def test_responses_with_provenance_filters_and_cache(tmp_path, server):
    rows = [{"prompt": f"question number {i}"} for i in range(4)] + [{"prompt": "bad one"}]
    server.script("bad one", *[("400", "prompt rejected")] * 4)  # one per run: failures are not cached
    cfg = _config(tmp_path, server, "responses", rows, "sampling.max_new_tokens=4")
    with pytest.raises(UserError, match="no rows kept"):  # "answer to: question number i" is 5 words
        _run(cfg)
    assert not Path(cfg.output).exists()
    reasons = sorted(r["provenance"]["filter"] for r in _rows(f"{cfg.output}.rejected.jsonl"))
    assert reasons == ["cut_at_length"] * 4 + ["failed"]
    assert server.total == 5

    cfg = _config(tmp_path, server, "responses", rows, "sampling.max_new_tokens=16")
    summary = _run(cfg)
    kept = _rows(cfg.output)
    assert [r["messages"][-1]["content"] for r in kept] == [
        f"answer to: question number {i}" for i in range(4)
    ]
    p = kept[0]["provenance"]
    assert p["teacher"] == "api:fake" and p["finish_reason"] == "stop" and p["filter"] == "kept"
    assert p["sampling"]["max_new_tokens"] == 16 and len(p["request_hash"]) == 64
    assert summary["dropped"] == {"failed": 1}

    before = server.total
    # Other settings are another job: its output replaces this one only when asked (overwrite=true);
    # the cache is kept, so answers already received are not asked again.
    again = _run(
        _config(
            tmp_path,
            server,
            "responses",
            rows,
            "sampling.max_new_tokens=16",
            "keep_cut=true",
            "overwrite=true",
        )
    )
    assert server.total - before == 1  # only the failed request is retried: failures are never cached
    assert again["requests_cached"] == 4
    _run(
        _config(
            tmp_path,
            server,
            "responses",
            rows,
            "sampling.max_new_tokens=16",
            "sampling.seed=7",
            "overwrite=true",
        )
    )
    assert server.total - before == 1 + 5  # a new seed misses the cache


def test_cot_keeps_rationales_matching_gold_or_majority(tmp_path, server):
    server.script(
        "Q1",
        ("reply", "Reasoning: 3 + 2 - 1 = 4.\nAnswer: 4"),
        ("reply", "Reasoning: 3 + 2 = 5.\nAnswer: 5"),
        ("reply", "I do not know."),
    )
    server.script(
        "Q2",
        ("reply", "Reasoning: 2 times 3.5 is 7.\nAnswer: 7"),
        ("reply", "Reasoning: seven.\nAnswer: 7.0"),
        ("reply", "Reasoning: eight.\nAnswer: 8"),
    )
    rows = [{"question": "Q1", "answer": "4"}, {"question": "Q2"}]
    cfg = _config(
        tmp_path,
        server,
        "cot",
        rows,
        "cot.samples=3",
        "cot.numeric=true",
        "cot.template='{question}'",
        "sampling.temperature=0.7",
    )
    summary = _run(cfg)
    kept = _rows(cfg.output)
    assert [(r["question"], r["teacher_answer"]) for r in kept] == [("Q1", "4"), ("Q2", "7"), ("Q2", "7")]
    assert kept[0]["rationale"] == "3 + 2 - 1 = 4."
    assert kept[0]["messages"][-1]["content"] == "Reasoning: 3 + 2 - 1 = 4.\nAnswer: 4"
    assert kept[1]["answer"] == "7"  # the self-consistency vote where there is no gold
    assert summary["dropped"] == {"wrong_answer": 1, "no_answer": 1, "not_majority": 1}
    seeds = {r["provenance"]["sampling"]["seed"] for r in kept if r["question"] == "Q2"}
    assert seeds == {0, 1}


def test_self_instruct_filters_then_answers(tmp_path, server):
    seeds = [
        {"instruction": "Write a short poem about the sea."},
        {"instruction": "Explain why the sky is blue."},
        {"instruction": "List three fruits that are red."},
    ]
    server.script_next(
        ("reply", "Task 4: Draw a picture of a happy cat."),
        ("reply", "Hi"),
        ("reply", "Write a short poem about the sea!"),
        ("reply", "Summarize the story of a famous book in two sentences."),
        ("reply", "Translate the word hello into French and Spanish.\nInput: <noinput>"),
    )
    cfg = _config(tmp_path, server, "self_instruct", seeds, "self_instruct.num_instructions=2")
    summary = _run(cfg)
    kept = _rows(cfg.output)
    assert [r["instruction"] for r in kept] == [
        "Summarize the story of a famous book in two sentences.",
        "Translate the word hello into French and Spanish.",
    ]
    assert kept[0]["messages"][-1]["content"].startswith("answer to: Summarize")

    assert summary["dropped"] == {"blacklisted": 1, "too_short": 1, "near_duplicate": 1}
    assert server.total == 5 + 2  # five proposals, then the two survivors answered
    assert [r["input"] for r in kept] == ["", ""]

    server.script_next(("ok",))  # an echo of the request is not an instruction
    cfg = _config(
        tmp_path,
        server,
        "self_instruct",
        seeds,
        "self_instruct.num_instructions=1",
        "sampling.seed=100",
        "overwrite=true",  # another job into the same output
    )
    server.script_next(("reply", "Name a country in Europe and its capital city."))
    summary = _run(cfg)
    assert summary["dropped"].get("echoes_prompt") == 1


def test_icl_labels_examples(tmp_path, server):
    rows = [{"input": "I love it", "output": "positive"}, {"input": "I hate it"}]
    cfg = _config(tmp_path, server, "icl", rows, "icl.instruction=Label the sentiment.")
    _run(cfg)
    kept = _rows(cfg.output)
    assert kept[0]["input"] == "I love it" and kept[0]["gold"] == "positive"
    assert kept[0]["output"] == "answer to: Label the sentiment.\n\nI love it"
    assert "gold" not in kept[1]


def test_json_answers_are_checked(tmp_path, server):
    server.script("a", ("reply", 'Sure: {"label": "positive", "score": 0.9}'))
    server.script("b", ("reply", '{"score": 0.1}'))
    server.script("c", ("reply", "positive"))
    rows = [{"prompt": p} for p in "abc"]
    summary = _run(_config(tmp_path, server, "responses", rows, "require_json=[label]"))
    assert summary["kept"] == 1 and summary["dropped"] == {"invalid_json": 2}


def test_bad_input_is_one_clear_error_and_no_output(tmp_path, server):
    with pytest.raises(UserError, match="greedy decoding"):
        _config(tmp_path, server, "cot", [{"question": "ok"}])
    cfg = _config(tmp_path, server, "cot", [{"question": "ok"}, {"q": "missing"}], "cot.samples=1")
    with pytest.raises(UserError, match=r"in.jsonl:2: needs a non-empty string field 'question'"):
        _run(cfg)
    server.script("only", ("400", "no"))
    cfg = _config(tmp_path, server, "responses", [{"prompt": "only"}])
    with pytest.raises(UserError, match="no rows kept"):
        _run(cfg)
    assert not Path(cfg.output).exists()
    assert _rows(f"{cfg.output}.rejected.jsonl")[0]["provenance"]["filter"] == "failed"
    with pytest.raises(UserError, match="unknown mode"):
        load_generate_config(None, ["mode=nope", "input=a", "output=b"])


def test_cli_with_a_local_model(tmp_path, tiny_model_dirs, capsys):
    teacher, _ = tiny_model_dirs
    src = _write(tmp_path / "prompts.jsonl", [{"prompt": "Hello world"}, {"prompt": "The cat sat"}])
    cfg = {
        "mode": "responses",
        "input": str(src),
        "output": str(tmp_path / "local.jsonl"),
        "keep_cut": True,
        "teacher": {"backend": "local", "name": str(teacher), "batch_size": 2},
        "sampling": {"max_new_tokens": 6},
    }
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["generate", str(path)]) == 0
    rows = _rows(tmp_path / "local.jsonl")
    assert len(rows) == 2 and rows[0]["provenance"]["teacher"] == f"local:{teacher}"
    assert "kept 2" in capsys.readouterr().out
    assert main(["generate", str(path)]) == 0  # all from the cache now
    summary = json.loads((tmp_path / "local.jsonl.summary.json").read_text())
    assert summary["requests_sent"] == 0 and summary["requests_cached"] == 2


# Round 0 draws both seed tasks in an order set by the seed: random.Random(0) puts the second first,
# random.Random(1) the first.
SORT = "Task {}: Sort these numbers from small to large.\nInput: 5, 2, 9"
EXPLAIN = "Task {}: Explain why the sky is blue."


@pytest.mark.parametrize("seed, demos", [(0, [EXPLAIN, SORT]), (1, [SORT, EXPLAIN])], ids=["seed0", "seed1"])
def test_self_instruct_keeps_inputs_where_needed(tmp_path, server, seed, demos):
    seeds = [
        {"instruction": "Sort these numbers from small to large.", "input": "5, 2, 9"},
        {"instruction": "Explain why the sky is blue."},
    ]
    server.script_next(("reply", "Task 3: Count the vowels in the given word.\nInput: banana"))
    cfg = _config(
        tmp_path, server, "self_instruct", seeds, "self_instruct.num_instructions=1", f"sampling.seed={seed}"
    )
    _run(cfg)
    [row] = _rows(cfg.output)
    assert row["instruction"] == "Count the vowels in the given word." and row["input"] == "banana"
    assert row["messages"][0]["content"] == "Count the vowels in the given word.\n\nbanana"
    proposal = server.requests[0]["body"]["messages"][-1]["content"]
    assert proposal == "\n".join(
        [
            "Come up with a new, different task instruction. Here are examples:",
            demos[0].format(1),
            demos[1].format(2),
            "Task 3:",
        ]
    )
    assert server.requests[0]["body"]["seed"] == seed  # round 0 asks with the configured seed
