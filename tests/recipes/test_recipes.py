"""Black-box recipes end to end: a real OpenAI-compatible server on loopback answers as the teacher
(by rule, so the filters have right and wrong answers to sort), a tiny local student is trained with
the real Trainer, and the report is checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmdistill.errors import UserError
from lmdistill.recipes import load_recipe_config, run_recipe
from lmdistill.recipes.run import draw_splits
from tests.teachers.faultserver import FaultServer


def _oracle(cfg, wrong: bool = False, empty: bool = False):
    """A responder that answers the last known question in a prompt with its gold answer."""
    tasks, splits = draw_splits(cfg)
    known = {}
    for task in tasks:
        for split in splits[task.name].values():
            for ex in split:
                known[ex.question] = ex
    # Pools the ICL recipe shows as demonstrations come from the same draws.

    def respond(prompt: str) -> str:
        if empty:
            return ""
        hits = [(prompt.rfind(q), ex) for q, ex in known.items() if q in prompt]
        if not hits:
            return "I do not know."
        ex = max(hits, key=lambda h: h[0])[1]
        answer = "12345" if wrong else ex.answer
        if "Reasoning:" in prompt:
            return f"Reasoning: {ex.rationale or 'because'}\nAnswer: {answer}"
        return answer

    return respond


def _cfg(tmp_path, student_dir, server_url: str, method: str, *extra: str):
    return load_recipe_config(
        None,
        [
            f"method={method}",
            f"output_dir={tmp_path / 'run'}",
            "teacher.backend=api",
            f"teacher.base_url={server_url}",
            "teacher.api_key_env=null",
            "teacher.name=fake",
            f"student.name={student_dir}",
            "tasks.train_per_task=8",
            "tasks.heldout_per_task=3",
            "icl.demo_pool=4",
            "icl.k=[0,2]",
            "icl.eval_k=2",
            "train.max_steps=2",
            "train.per_device_train_batch_size=4",
            "train.save_steps=100",
            "train.logging_steps=1",
            "eval.max_new_tokens=4",
            "eval.cot_max_new_tokens=64",
            "sampling.max_new_tokens=32",
            *extra,
        ],
    )


@pytest.fixture
def student_dir(tiny_model_dirs):
    return tiny_model_dirs[1]


def _run(tmp_path, student_dir, method, *extra, wrong=False, empty=False, reruns=0):
    probe_cfg = _cfg(tmp_path, student_dir, "http://127.0.0.1:1/v1", method, *extra)
    with FaultServer(responder=_oracle(probe_cfg, wrong=wrong, empty=empty)) as server:
        cfg = _cfg(tmp_path, student_dir, server.url, method, *extra)
        results = run_recipe(cfg, log=lambda *a: None)
        again = []
        for _ in range(reruns):  # the cache key holds the endpoint: the same server must answer
            sent_before = server.total
            again.append((run_recipe(cfg, log=lambda *a: None), server.total - sent_before))
        return cfg, results, again


def test_icl_recipe_end_to_end_and_cached_rerun(tmp_path, student_dir):
    _, results, again = _run(tmp_path, student_dir, "icl", "tasks.names=[arithmetic:1,sentiment]", reruns=1)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "data" / "icl.jsonl").read_text().splitlines()]
    # 4 queries per task (8 - 4 demos) x k in {0, 2}, all answered right by the rule teacher.
    assert len(rows) == 2 * 4 * 2 and results["data"]["kept"] == 16
    assert {r["k"] for r in rows} == {0, 2}
    two_shot = next(r for r in rows if r["k"] == 2)["messages"][0]["content"]
    assert two_shot.count("Q: ") == 3 and two_shot.rstrip().endswith("A:")
    assert all(r["messages"][-1]["content"] == r["gold"] for r in rows)
    teacher = results["scores"]["teacher"]
    assert teacher["0-shot / arithmetic:1"]["accuracy"] == 1.0
    assert teacher["2-shot / sentiment"]["n"] == 3
    assert set(results["scores"]) == {"teacher", "student before", "student (icl)"}
    assert (out / "icl" / "student" / "config.json").is_file()
    report = (out / "report.md").read_text()
    assert "| 2-shot / sentiment |" in report and "teacher requests sent" in report
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2 * 3 * 2
    sent = results["data"]["requests_sent"]
    assert sent > 0

    # The same recipe again: every teacher answer comes from the cache.
    rerun, requests = again[0]
    assert requests == 0
    assert rerun["data"]["requests_sent"] == 0 and rerun["data"]["requests_cached"] == sent


def test_icl_keep_gold_drops_wrong_teacher_answers(tmp_path, student_dir):
    with pytest.raises(UserError, match="no training data left") as err:
        _run(tmp_path, student_dir, "icl", "tasks.names=[arithmetic:1]", "icl.keep=gold", wrong=True)
    assert "wrong_answer" in str(err.value)
    assert not (tmp_path / "run" / "icl" / "student").exists()
    rejected = (tmp_path / "run" / "data" / "rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 4 * 2 and all(json.loads(r)["filter"] == "wrong_answer" for r in rejected)


def test_teacher_that_returns_nothing_usable(tmp_path, student_dir):
    with pytest.raises(UserError, match=r"no training data left|labelled only 0"):
        _run(tmp_path, student_dir, "icl", "tasks.names=[sentiment]", empty=True)
    assert not (tmp_path / "run" / "data" / "icl.jsonl").exists()


def test_k_larger_than_the_labelled_pool(tmp_path, student_dir):
    with pytest.raises(UserError, match="demonstrations"):
        _run(tmp_path, student_dir, "icl", "tasks.names=[sentiment]", "icl.k=[6]")


def test_cot_step_by_step_with_label_only_comparison(tmp_path, student_dir):
    _, results, _ = _run(
        tmp_path,
        student_dir,
        "cot",
        "tasks.names=[arithmetic:2]",
        "cot.variant=step_by_step",
        "cot.samples=1",
        "cot.alpha=0.3",
    )
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "data" / "step_by_step.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 8
    label = [r for r in rows if r["messages"][0]["content"].startswith("[label] ")]
    rationale = [r for r in rows if r["messages"][0]["content"].startswith("[rationale] ")]
    assert len(label) == len(rationale) == 8
    assert {r["weight"] for r in label} == {0.3} and {r["weight"] for r in rationale} == {0.7}
    assert all(r["messages"][1]["content"].startswith("Reasoning: ") for r in rationale)
    label_only = [json.loads(line) for line in (out / "data" / "label_only.jsonl").read_text().splitlines()]
    assert len(label_only) == 8 and all(
        r["messages"][1]["content"].startswith("Answer: ") for r in label_only
    )
    scores = results["scores"]
    assert scores["teacher"]["cot / arithmetic:2"]["accuracy"] == 1.0
    assert set(scores["student (step_by_step)"]) == {"label / arithmetic:2"}
    assert set(scores["student (label_only)"]) == {"direct / arithmetic:2"}


def test_instruct_recipe_format_filter_and_comparison(tmp_path, student_dir):
    _, results, _ = _run(
        tmp_path, student_dir, "instruct", "method=instruct", "tasks.names=[format_one_word,format_json]"
    )
    assert results["data"]["rows"] == {"instruct": results["data"]["kept"]}
    assert results["data"]["kept"] > 0
    vs = results["versus_teacher"]
    assert set(vs) == {"format_one_word", "format_json"}
    assert all(r["win"] + r["tie"] + r["loss"] == 3 for r in vs.values())
    assert "win / tie / loss" in (tmp_path / "run" / "report.md").read_text()
    # ROUGE-L against the reference answer, recomputed from predictions.jsonl.
    from lmdistill.text import rouge_l

    preds = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    for task, r in vs.items():
        mine = [p for p in preds if p["task"] == task]
        for model, key in (("teacher", "rouge_ref_teacher"), ("student (instruct)", "rouge_ref_after")):
            expected = sum(rouge_l(p[model], str(p["gold"])) for p in mine) / len(mine)
            assert r[key] == pytest.approx(expected)
        # The teacher's figure by hand: the oracle answers with the gold answer, which the server cuts
        # to its first eval.max_new_tokens = 4 words. Its word tokens (lower-cased runs of letters and
        # digits) are then a prefix of the gold's, m of n: LCS m, precision 1, recall m / n, F1 2m / (m + n).
        f1 = []
        for p in mine:
            gold = str(p["gold"])
            assert p["teacher"] == " ".join(gold.split()[:4])
            m, n = len(_words(p["teacher"])), len(_words(gold))
            f1.append(2 * m / (m + n))
        assert r["rouge_ref_teacher"] == pytest.approx(sum(f1) / len(f1), abs=1e-12)


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def test_per_task_counts_override_the_defaults(tmp_path, student_dir):
    cfg = _cfg(
        tmp_path,
        student_dir,
        "http://127.0.0.1:1/v1",
        "instruct",
        "tasks.names=[arithmetic:1,format_json]",
        "tasks.train_counts={format_json: 5}",
        "tasks.heldout_counts={arithmetic:1: 2}",
    )
    _, splits = draw_splits(cfg)
    assert len(splits["format_json"]["train"]) == 5 and len(splits["arithmetic:1"]["train"]) == 8
    assert len(splits["arithmetic:1"]["heldout"]) == 2 and len(splits["format_json"]["heldout"]) == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=distil", "unknown method"),
        ("icl.selection=best", "random or nearest"),
        ("cot.alpha=1.5", "cot.alpha"),
        ("icl.demo_pool=99", "demo_pool"),
        ("tasks.names=[nope]", None),
        ("tasks.train_counts={format_json: 4}", "not one of tasks.names"),
        ("tasks.heldout_counts={arithmetic:1: 0}", "integer >= 1"),
        ("tasks.train_counts={arithmetic:1: 3}", "fewest 3"),
    ],
)
def test_bad_recipe_config(tmp_path, student_dir, override, message):
    with pytest.raises(UserError, match=message or "nope"):
        cfg = _cfg(tmp_path, student_dir, "http://127.0.0.1:1/v1", "icl", override)
        draw_splits(cfg)


def test_api_teacher_cannot_add_logits_kd(tmp_path, student_dir):
    with pytest.raises(UserError, match="kd_ratio"):
        _cfg(tmp_path, student_dir, "http://127.0.0.1:1/v1", "icl", "distill.kd_ratio=0.5")


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "recipes"


@pytest.mark.parametrize("name", ["icl", "cot", "instruct"])
def test_shipped_recipe_configs_load(name):
    cfg = load_recipe_config(CONFIGS / f"{name}.yaml")
    assert cfg.method == name and cfg.teacher.backend == "local"


def test_how_far_config_loads_with_its_training_sections():
    cfg = load_recipe_config(CONFIGS / "how_far.yaml")
    assert cfg.student.layers == [0, 1, 2, 3, 4, 5, 26, 27, 28, 29] and cfg.hints.hidden_weight == 1.0
    assert cfg.tasks.train_counts == {"format_one_word": 135, "format_json": 145}
    _, splits = draw_splits(cfg)
    assert {name: len(s["train"]) for name, s in splits.items()} == {
        "arithmetic:1": 600,
        "sentiment": 600,
        "format_one_word": 135,
        "format_json": 145,
    }


def test_recipe_cli_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    from lmdistill.cli import main

    assert main(["recipe", str(tmp_path / "missing.yaml")]) == 2
    assert main(["recipe", str(CONFIGS / "icl.yaml"), "method=distil"]) == 2
    bad = tmp_path / "task.jsonl"
    bad.write_text('{"question": "2 + 2?"}\n')
    out = tmp_path / "out"
    code = main(["recipe", str(CONFIGS / "icl.yaml"), f"tasks.names=[{bad}]", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:1" in err and "Traceback" not in err
    assert not (out / "data").exists()
