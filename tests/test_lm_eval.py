"""An exported student folder evaluates with EleutherAI's lm-evaluation-harness (local task, no network)."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

# Checked without importing: lm_eval takes seconds to import, and only the test below needs it.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-eval is not installed (pip install 'lmdistill[lmeval]')",
)

ROWS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Berlin"], "answer": 0},
    {"question": "How many legs does a cat have?", "choices": ["two", "four", "six"], "answer": 1},
    {
        "question": "Which animal slept by the door?",
        "choices": ["the cat", "the bird", "the dog"],
        "answer": 2,
    },
    {"question": "Alice has 3 apples and buys 2 more. How many?", "choices": ["5", "6", "1"], "answer": 0},
]


def write_task(folder, name="lmdistill_tiny_mc"):
    folder.mkdir()
    data = folder / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        textwrap.dedent(
            f"""\
            task: {name}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {data}
            test_split: test
            output_type: multiple_choice
            doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
            doc_to_target: answer
            doc_to_choice: choices
            metric_list:
              - metric: acc
                aggregation: mean
                higher_is_better: true
            """
        ),
        encoding="utf-8",
    )
    return name


def test_exported_student_runs_in_lm_eval(tiny_model_dirs, tmp_path, monkeypatch):
    import lm_eval
    import lm_eval.tasks

    from lmdistill.export import export_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    _, student = tiny_model_dirs
    folder = export_model(student, tmp_path / "export", log=lambda _msg: None)
    name = write_task(tmp_path / "tasks")

    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=[name],
        task_manager=lm_eval.tasks.TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        device="cpu",
        batch_size=1,
        bootstrap_iters=0,
        log_samples=False,
    )
    metrics = results["results"][name]
    # the accuracy recomputed: per row, the choice with the highest log-likelihood of " " + choice
    # after "Question: ...\nAnswer:" (lm_eval's multiple_choice: context and whole text tokenized,
    # the continuation is what the whole adds; no BOS)
    import torch

    from lmdistill.models import load_model, load_tokenizer

    model, tok = load_model(folder).eval(), load_tokenizer(folder)
    correct = 0
    for row in ROWS:
        context = f"Question: {row['question']}\nAnswer:"
        scores = []
        for choice in row["choices"]:
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))))
        correct += max(range(len(scores)), key=scores.__getitem__) == row["answer"]
    assert metrics["acc,none"] == pytest.approx(correct / len(ROWS))
    assert results["n-samples"][name]["effective"] == len(ROWS)
