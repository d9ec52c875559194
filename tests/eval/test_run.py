"""`run_eval` end to end on the tiny models: the report, the plots, skipped metrics, bad input."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from lmdistill.errors import UserError
from lmdistill.eval import run_eval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEXT = (
    "Hello world, how are you today? I am fine, thank you very much. "
    "The cat sat on the mat and the dog slept by the door. "
    "Distillation trains a small student to imitate a large teacher. "
) * 3


@pytest.fixture
def inputs(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps({"question": "Alice has 3 apples and buys 2 more. How many?", "answer": "5"})
        + "\n"
        + json.dumps({"question": "What is the capital of France?", "answer": "Paris"})
        + "\n"
    )
    summ = tmp_path / "summ.jsonl"
    summ.write_text(json.dumps({"prompt": "Say hello.", "reference": "Hello world"}) + "\n")
    text = tmp_path / "heldout.txt"
    text.write_text(TEXT)
    return [str(qa), str(summ)], str(text)


def _quiet(*_):
    import os
    import time

    if os.environ.get("EVAL_LOG"):
        print(f"{time.perf_counter():.2f}", *_)


def test_report_on_teacher_and_student(tmp_path, tiny_model_dirs, inputs, monkeypatch):
    teacher, student = tiny_model_dirs
    tasks, text = inputs
    run_dir = tmp_path / "run"
    shutil.copytree(student, run_dir / "student")
    (run_dir / "checkpoint-3").mkdir()
    history = [{"step": s, "loss": 4.0 - s, "ce": 3.0 - s / 2, "kd": 2.0 - s / 3} for s in (1, 2, 3)]
    (run_dir / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    out = tmp_path / "report"
    _forward_clock(monkeypatch)

    results = run_eval(
        [str(run_dir / "student")],
        teacher=str(teacher),
        tasks=tasks,
        text=text,
        output_dir=str(out),
        max_new_tokens=4,
        batch_size=4,
        max_length=24,
        command="lmdistill eval test",
        log=_quiet,
    )

    report = (out / "report.md").read_text()
    for section in ("## Models", "## Results", "## Notes", "## Plots", "## Machine", "## Arguments"):
        assert section in report
    for metric in (
        "qa: accuracy",
        "summ: ROUGE-L",
        "perplexity",
        "top-1 agreement",
        "KL(teacher",
        "generation exact match",
        "parameters",
        "size on disk",
        "peak memory",
        "prefill tokens/s",
        "generation tokens/s",
        "latency p50",
        "latency p95",
        "compression",
        "speedup",
        "torch:",
        "transformers:",
        "lmdistill:",
        "cpu_count:",
        "lmdistill eval test",
    ):
        assert metric in report, metric
    assert "| metric | teacher | student |" in report

    plots = ["quality_vs_size.png", "task_scores.png", "training_curves.png"]
    assert results["plots"] == plots
    for name in plots:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in report

    saved = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in saved["models"]] == [str(teacher), str(run_dir / "student")]
    t, s = saved["models"]
    assert t["role"] == "teacher" and s["role"] == "model"
    assert t["compression"] == pytest.approx(1.0) and t["speedup"] == pytest.approx(1.0)
    assert s["compression"] == pytest.approx(t["cost"]["parameters"] / s["cost"]["parameters"])
    assert s["compression"] > 1
    assert s["agreement"]["tokens"] == s["text_tokens"] == t["text_tokens"] > 0
    # the text figures recomputed the hard way: the same 24-token chunks, every logit in float64
    from lmdistill.eval import text_features
    from lmdistill.models import load_model, load_tokenizer
    from tests.conftest import float64_token_scores

    tok = load_tokenizer(teacher)
    feats = text_features(TEXT, tok, 24)
    t_model, s_model = load_model(teacher).eval(), load_model(run_dir / "student").eval()
    ppl, top1, kl, tokens = float64_token_scores(s_model, t_model, feats, len(tok))
    assert s["text_tokens"] == tokens
    assert s["agreement"]["top1"] == pytest.approx(top1) and s["agreement"]["kl"] == pytest.approx(
        kl, rel=1e-3
    )
    assert s["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert t["perplexity"] == pytest.approx(
        float64_token_scores(t_model, t_model, feats, len(tok))[0], rel=1e-4
    )
    assert s["generation_agreement"]["examples"] == 3
    assert "teacher log-prob of own answers" in report
    for m in (t, s):  # the teacher's log-prob of each model's own answers, recomputed in float64
        assert m["own_answers"]["answers"] == 3
        total, count = _float64_answer_logprob(t_model, tok, results["models"][0]["name"], m["outputs"])
        assert m["own_answers"]["tokens"] == count > 0
        assert m["own_answers"]["logprob_per_token"] == pytest.approx(total / count, rel=1e-4)
    for m in (t, s):
        assert set(m["quality"]) == {"qa", "summ"}
        assert m["quality"]["qa"]["examples"] == 2 and m["quality"]["summ"]["kind"] == "rouge_l"
        assert m["perplexity"] > 1.0
    # The cost figures recomputed. Size on disk: the weight file's bytes. Speed: on the forward clock
    # (_forward_clock) each figure is an exact function of the forwards it takes, counted here.
    prefill = feats[:4]  # the fixed batch: the first batch_size features, right-padded
    width = max(len(f["input_ids"]) for f in prefill)
    prefill_tokens = sum(len(f["input_ids"]) for f in prefill)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ANSWER_PROMPTS
    ]
    prompt_lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    for m, model, folder in ((t, t_model, teacher), (s, s_model, run_dir / "student")):
        cost = m["cost"]
        assert cost["disk_bytes"] == (folder / "model.safetensors").stat().st_size
        assert cost["prefill_batch_tokens"] == prefill_tokens
        assert cost["prefill_tokens_per_s"] == prefill_tokens / _forward_cost(width)
        # greedy answers of at most 4 tokens (max_new_tokens), stopping after EOS, one prompt at a time
        new_tokens = [len(_greedy(model, tok, p, 4)) for p in prompts]
        assert cost["generated_tokens"] == sum(new_tokens)
        # batched: one prefill over the left-padded prompts, then one step per further token of the longest
        batched = _forward_cost(max(prompt_lengths)) + (max(new_tokens) - 1) * _forward_cost(1)
        assert cost["generation_tokens_per_s"] == pytest.approx(sum(new_tokens) / batched, rel=1e-12)
        alone = [
            _forward_cost(k) + (n - 1) * _forward_cost(1)
            for k, n in zip(prompt_lengths, new_tokens, strict=True)
        ]
        assert cost["latency_requests"] == 3
        assert cost["latency_p50_s"] == pytest.approx(float(np.percentile(alone, 50)), rel=1e-12)
        assert cost["latency_p95_s"] == pytest.approx(float(np.percentile(alone, 95)), rel=1e-12)
        # peak memory is measured in another process: at least the float32 weights were resident there
        assert cost["peak_memory_method"] == "VmHWM"
        assert cost["peak_memory_bytes"] >= 4 * sum(p.numel() for p in model.parameters())
    assert s["training_log"].endswith("checkpoint-3/trainer_state.json") and t["training_log"] is None


ANSWER_PROMPTS = [
    "Alice has 3 apples and buys 2 more. How many?",
    "What is the capital of France?",
    "Say hello.",
]  # the tasks' order in `inputs`

#: The forward clock: each forward of a loaded model costs PER_CALL + PER_POSITION per input position.
PER_CALL, PER_POSITION = 1.0, 0.125


def _forward_cost(positions: int) -> float:
    return PER_CALL + PER_POSITION * positions


def _forward_clock(monkeypatch):
    """`time` in the eval modules replaced by a clock that moves only when a model loaded by run_eval
    runs a forward (by `_forward_cost` of its input's length), so every timing is an exact count."""
    import time as real_time

    from lmdistill.eval import cost, run, speculative

    class Clock:
        now = 0.0

        def perf_counter(self):
            return self.now

        def __getattr__(self, name):
            return getattr(real_time, name)

    clock = Clock()

    def pre_hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        clock.now += _forward_cost(ids.shape[-1])

    load = run._load

    def hooked_load(*args, **kwargs):
        model = load(*args, **kwargs)
        model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        return model

    monkeypatch.setattr(run, "_load", hooked_load)
    for module in (run, cost, speculative):
        monkeypatch.setattr(module, "time", clock)


def _greedy(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding by hand, one full forward per token: the new ids, up to and including EOS."""
    import torch

    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        while len(new) < max_new_tokens:
            new.append(int(model(torch.tensor([ids + new])).logits[0, -1].argmax()))
            if new[-1] == tok.eos_token_id:
                break
    return new


def _float64_answer_logprob(teacher, tok, _name, outputs):
    """Sum of the teacher's log-probs of each answer's tokens after its chat prompt, and their count."""
    import torch

    total, count = 0.0, 0
    model = teacher.double()
    for prompt, answer in zip(ANSWER_PROMPTS, outputs, strict=True):
        p = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        if not a_ids:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([p_ids + a_ids])).logits[0, :, : len(tok)].double()
        logp = torch.log_softmax(logits, -1)
        for j, tid in enumerate(a_ids):
            total += logp[len(p_ids) + j - 1, tid].item()
            count += 1
    model.float()
    return total, count


def test_different_tokenizer_skips_token_agreement(tmp_path, tiny_model_dirs, inputs):
    from tests.conftest import build_tiny_tokenizer, make_tiny_llama

    teacher, _ = tiny_model_dirs
    tasks, text = inputs
    other = tmp_path / "other"
    tok = build_tiny_tokenizer(other, vocab_size=300)
    make_tiny_llama(len(tok), seed=5).save_pretrained(other)

    results = run_eval(
        [str(other)],
        teacher=str(teacher),
        tasks=tasks[:1],
        text=text,
        output_dir=str(tmp_path / "out"),
        max_new_tokens=3,
        max_length=24,
        measure_memory=False,
        log=_quiet,
    )
    row = results["models"][1]
    assert row["agreement"] is None and row["perplexity"] > 1.0
    assert row["generation_agreement"]["examples"] == 2
    assert any("tokenizer differs from the teacher" in n for n in row["notes"])
    assert row["own_answers"] is None
    assert any("log-likelihood of own answers skipped" in n for n in row["notes"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "token agreement (top-1, KL) skipped" in report
    assert "training_curves.png" not in results["plots"]  # no trainer logs: skipped quietly


def test_missing_model_is_a_user_error_before_any_work(tmp_path, tiny_model_dirs, inputs):
    teacher, student = tiny_model_dirs
    tasks, text = inputs
    missing = tmp_path / "nope" / "student"
    with pytest.raises(UserError, match=rf"model '{re.escape(str(missing))}'.*not found"):
        run_eval(
            [str(student), str(missing)],
            teacher=str(teacher),
            tasks=tasks,
            text=text,
            output_dir=str(tmp_path / "out"),
            log=_quiet,
        )
    assert not (tmp_path / "out").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"'.*empty'.*cannot be loaded"):
        run_eval([str(tmp_path / "empty")], text=text, output_dir=str(tmp_path / "out"), log=_quiet)


def test_task_rows_without_answers(tmp_path, tiny_model_dirs, inputs):
    _, student = tiny_model_dirs
    _, text = inputs
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"question": "1+1?", "answer": "2"}) + "\n" + json.dumps({"question": "2+2?"}) + "\n"
    )
    with pytest.raises(UserError, match=rf"{re.escape(str(bad))}:2: a task row needs a gold 'answer'"):
        run_eval([str(student)], tasks=[str(bad)], text=text, output_dir=str(tmp_path / "o"), log=_quiet)
    with pytest.raises(UserError, match="nothing to evaluate"):
        run_eval([str(student)], output_dir=str(tmp_path / "o"), log=_quiet)


def test_drafts_measured_against_the_teacher(tmp_path, tiny_model_dirs, inputs):
    """--speculative: acceptance on text and on own answers, real assisted generation whose text
    equals the teacher's, fixed-length latency; the report shows each."""
    teacher, student = tiny_model_dirs
    tasks, text = inputs
    out = tmp_path / "report"
    results = run_eval(
        [str(student)],
        teacher=str(teacher),
        tasks=tasks[:1],
        text=text,
        output_dir=str(out),
        max_new_tokens=6,
        batch_size=4,
        max_length=24,
        measure_memory=False,
        speculative=True,
        draft_tokens=3,
        fixed_length=4,
        command="lmdistill eval test",
        log=_quiet,
    )
    t_row, s_row = results["models"]
    agreement = s_row["agreement"]
    assert 0.0 < agreement["acceptance"] < 1.0  # random tiny models: neither identical nor disjoint
    alpha = agreement["acceptance"]
    assert agreement["tokens_per_target_call"][4] == pytest.approx((1 - alpha**5) / (1 - alpha))
    draft = s_row["draft"]
    assert draft["same_tokenizer"] and draft["draft_tokens"] == 3 and draft["prompts"] == 2
    assert draft["own_greedy"]["tokens"] == 12  # 2 prompts x 6 tokens (no early EOS from these seeds)
    assert draft["assisted"]["identical"] == 2 and draft["assisted"]["mismatches"] == []
    assert "draft" not in t_row
    for row in (t_row, s_row):
        assert row["cost"]["fixed_length_tokens"] == 4 and row["cost"]["ttft_s"] > 0
    report = (out / "report.md").read_text()
    for metric in (
        "draft acceptance 1 − TVD",
        "tokens per target call",
        "assisted generation speedup (γ = 3",
        "| assisted text identical to teacher's | — | 2/2 |",
        "per-token latency at 4 tokens",
    ):
        assert metric in report, metric
    assert "FAILED" not in report


def test_speculative_needs_teacher_and_task(tmp_path, tiny_model_dirs, inputs):
    teacher, student = tiny_model_dirs
    tasks, text = inputs
    with pytest.raises(UserError, match="--speculative needs --teacher"):
        run_eval([str(student)], tasks=tasks, output_dir=str(tmp_path / "r"), speculative=True, log=_quiet)
    with pytest.raises(UserError, match="--speculative needs --teacher"):
        run_eval(
            [str(student)],
            teacher=str(teacher),
            text=text,
            output_dir=str(tmp_path / "r"),
            speculative=True,
            log=_quiet,
        )
    assert not (tmp_path / "r").exists()
