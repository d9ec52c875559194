"""On-policy distillation on tiny real models: lmbda 0 is today's step exactly; generated batches mask the
prompt and everything after the first EOS; the `sampled` estimator's gradient is reverse KL's in
expectation; runs against a real loopback `lmdistill serve`; each bad input is one line."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from lmdistill.chunked import LossSpec
from lmdistill.config import OnPolicyConfig, load_config
from lmdistill.data import DistillCollator
from lmdistill.errors import UserError
from lmdistill.losses import sampled_token_loss
from lmdistill.training.on_policy import (
    OFF,
    ON,
    SAMPLES_FILE,
    OnPolicyTrainer,
    Schedule,
    teacher_token_logprobs,
)
from lmdistill.training.sampling import PromptCollator, prompt_features, sample_completions, sequence_batch
from lmdistill.training.trainer import DistillTrainer
from tests.conftest import cli_fails, tiny_training_args
from tests.teachers.test_whitebox import _run_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["What is AI?", "Tell me a joke.", "Do you like music?", "Who are you?", "What is 2 + 2?"]


def _rows(n=8, answers=True):
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}]
        if answers:
            msgs.append({"role": "assistant", "content": f"An answer number {i}, short."})
        rows.append({"messages": msgs})
    return rows


def _pair(tiny_llama, tok):
    v = len(tok)
    student = tiny_llama(v, num_layers=2, seed=0)
    teacher = tiny_llama(v, num_layers=3, hidden=48, heads=4, kv_heads=2, seed=1)
    return student, teacher


# -- lmbda 0 is today's step ------------------------------------------------------------------------------


def test_lmbda_zero_equals_the_off_policy_step_exactly(tiny_llama, tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    feats = prompt_features(_rows(8), tok, 64, 16)
    spec = LossSpec(loss="forward_kl", ce_weight=0.4, kd_weight=0.6, vocab=len(tok), chunk_size=5)
    results = []
    for on in (False, True):
        student, teacher = _pair(tiny_llama, tok)
        kw = dict(
            model=student,
            teacher=teacher,
            spec=spec,
            args=tiny_training_args(
                tmp_path / str(on), gradient_accumulation_steps=2, per_device_train_batch_size=2
            ),
            train_dataset=feats,
        )
        if on:
            trainer = OnPolicyTrainer(
                **kw,
                data_collator=PromptCollator(DistillCollator(pad_token_id=0)),
                on_policy=OnPolicyConfig(lmbda=0.0, max_new_tokens=8),
                tokenizer=tok,
                max_length=64,
            )
        else:
            trainer = DistillTrainer(**kw, data_collator=DistillCollator(pad_token_id=0))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        results.append((losses, [p.detach().clone() for p in student.parameters()]))
        if on:
            assert all(h.get("on_policy_steps") == 0 for h in trainer.state.log_history if "loss" in h)
    assert results[0][0] == results[1][0] and len(results[0][0]) == 2
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


# -- masks ---------------------------------------------------------------------------------------------------


def test_generated_batches_mask_the_prompt_and_everything_after_the_first_eos(tiny_llama, tiny_tokenizer):
    tok = tiny_tokenizer
    model = tiny_llama(len(tok), seed=3)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    # Many end ids make early stops likely; rows that stop keep the EOS as their last token.
    eos = set(range(40, 120))
    comps = sample_completions(model, prompts, pad_id=0, eos=eos, max_new_tokens=12, seed=1)
    assert any(len(c) < 12 for c in comps), comps  # some row stopped early
    for c in comps:
        assert all(t not in eos for t in c[:-1])
        assert len(c) == 12 or c[-1] in eos
    assert sample_completions(model, prompts, pad_id=0, eos=eos, max_new_tokens=12, seed=1) == comps
    assert model.training  # put back as it was (tiny_llama returns a model in train mode)

    batch = sequence_batch(prompts, [[20, 21, 2], [22], [23, 24, 25, 26]], pad_id=0, max_length=8)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 20, 21, 2, 0, 0],
        [8, 9, 22, 0, 0, 0, 0, 0],
        [10, 11, 12, 13, 14, 23, 24, 25],  # cut at max_length
    ]
    x = -100
    assert batch["labels"].tolist() == [
        [x, x, x, 20, 21, 2, x, x],
        [x, x, 22, x, x, x, x, x],
        [x, x, x, x, x, 23, 24, 25],
    ]
    assert batch["attention_mask"].sum(1).tolist() == [6, 3, 8]


def test_prompts_from_rows(tiny_tokenizer):
    tok = tiny_tokenizer
    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    rows = [
        {"prompt": "Say hi:", "completion": " hi"},
        {"prompt": "Only a prompt:"},
        {"messages": chat},
        {"messages": [*chat, {"role": "user", "content": "More?"}]},
    ]
    feats = prompt_features(rows, tok, 64, 16, need_answers=False)
    assert feats[0]["prompt_ids"] == feats[1]["prompt_ids"][:0] + tok("Say hi:")["input_ids"]
    assert all(x == -100 for x in feats[1]["labels"])  # a prompt-only row
    want = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert tok.decode(feats[2]["prompt_ids"]) == want
    assert tok.decode(feats[3]["prompt_ids"]).endswith("More?<|im_end|>\n<|im_start|>assistant\n")
    assert any(x != -100 for x in feats[2]["labels"])  # the answer stays for off-policy steps
    with pytest.raises(UserError, match="no answer to train on"):
        prompt_features(rows, tok, 64, 16, need_answers=True)
    with pytest.raises(UserError, match="text row has no prompt"):
        prompt_features([{"text": "plain"}], tok, 64, 16, need_answers=False)
    long = prompt_features([{"prompt": "word " * 80}], tok, 40, 16, need_answers=False)
    assert len(long[0]["prompt_ids"]) == 24  # the prompt keeps its last max_length - max_new_tokens tokens


# -- the sampled estimator --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_sampled_estimator_gradient_is_reverse_kl_in_expectation(temperature):
    g = torch.Generator().manual_seed(0)
    V, M = 5, 400_000
    theta = torch.randn(V, generator=g, dtype=torch.float64)
    logp = torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64) * 2, -1)

    exact = theta.clone().requires_grad_(True)
    q = torch.softmax(exact, -1)
    (q * (torch.log(q) - logp)).sum().backward()  # KL(q || p)

    est = theta.clone().requires_grad_(True)
    mu = torch.softmax(theta / temperature, -1)
    y = torch.multinomial(mu, M, replacement=True, generator=g)
    loss, reward = sampled_token_loss(est.expand(M, V), y, logp[y], temperature=temperature)
    (loss / M).backward()
    torch.testing.assert_close(est.grad, exact.grad, rtol=0, atol=0.01)
    forward_kl = theta.clone().requires_grad_(True)
    (torch.softmax(logp, -1) * (logp - torch.log_softmax(forward_kl, -1))).sum().backward()
    assert (forward_kl.grad - exact.grad).abs().max() > 0.1  # the check can tell the two apart
    if temperature == 1.0:  # the reward estimates -KL(q || p)
        kl = (q * (torch.log(q) - logp)).sum().item()
        assert -reward.item() / M == pytest.approx(kl, abs=0.01)


@pytest.mark.parametrize(("top_p", "kept"), [(0.8, 2), (0.9, 3), (1.0, 4)])
def test_sampling_log_probs_are_those_transformers_samples_from(top_p, kept):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from lmdistill.losses import sampling_logprobs

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)  # p = 0.64, 0.24, 0.09, 0.03
    warped = TemperatureLogitsWarper(1.3)(None, logits.clone())
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped)
    want = torch.log_softmax(warped, -1)[0]
    got = sampling_logprobs(logits.expand(4, 4), torch.arange(4), 1.3, top_p)
    assert int(torch.isfinite(got).sum()) == kept
    torch.testing.assert_close(got, want)


# -- schedule ------------------------------------------------------------------------------------------------


def test_schedule_is_a_function_of_seed_and_step():
    s = Schedule(OnPolicyConfig(lmbda=0.5), seed=3)
    kinds = [s.kind(step) for step in range(400)]
    assert kinds == [Schedule(OnPolicyConfig(lmbda=0.5), seed=3).kind(step) for step in range(400)]
    assert 0.4 < kinds.count(ON) / 400 < 0.6
    assert set(Schedule(OnPolicyConfig(lmbda=1.0), 0).kind(i) for i in range(50)) == {ON}
    lin = Schedule(OnPolicyConfig(lmbda=0.8, schedule="linear", ramp_steps=10), 0)
    assert [lin.lmbda(i) for i in (0, 5, 10, 20)] == pytest.approx([0.0, 0.4, 0.8, 0.8])
    ada = Schedule(OnPolicyConfig(lmbda=0.3, schedule="adaptive", adaptive_step=0.2), 0)
    assert ada.kind(0) == OFF
    for loss in (2.0, 1.5, 1.7, 1.6, 1.9):  # rises twice
        ada.observe(loss)
    assert ada.lmbda(0) == pytest.approx(0.3)  # 0.2 then capped at lmbda


# -- runs ------------------------------------------------------------------------------------------------------


def _chat_data(path, n=8, answers=True):
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(n, answers)))
    return path


def _on_policy_run(tmp_path, tiny_model_dirs, on_policy, teacher=None, steps=2, answers=True):
    from lmdistill.training.run import run

    cfg = _run_yaml(
        tmp_path,
        teacher={"name": str(tiny_model_dirs[0]), **(teacher or {})},
        student={"name": str(tiny_model_dirs[1])},
        data={"train": str(_chat_data(tmp_path / "chat.jsonl", answers=answers)), "max_length": 64},
        distill={"kd_ratio": 0.5},
        on_policy={"max_new_tokens": 10, "log_samples_every": 1, **on_policy},
    )
    cfg.train.max_steps = steps
    lines = []
    cfg.train.save_steps = steps  # the last checkpoint's trainer_state.json holds every log
    run(cfg, log=lines.append)
    return cfg, lines


def _history(tmp_path) -> list[dict]:
    state = next((tmp_path / "out").glob("checkpoint-*")) / "trainer_state.json"
    return json.loads(state.read_text())["log_history"]


def test_on_policy_run_in_process(tiny_model_dirs, tmp_path, monkeypatch):
    import copy

    import lmdistill.training.sampling as sampling_module

    drawn = []  # per sampling call: (the student's weights then, prompts, completions)

    def recorded(model, prompts, **kw):
        completions = sample_completions(model, prompts, **kw)
        drawn.append((copy.deepcopy(model.state_dict()), prompts, completions))
        return completions

    monkeypatch.setattr(sampling_module, "sample_completions", recorded)
    _on_policy_run(tmp_path, tiny_model_dirs, {"lmbda": 1.0}, answers=False)
    steps = [h for h in _history(tmp_path) if "loss" in h]
    assert len(steps) == 2 and all(h["on_policy_steps"] == 1 for h in steps) and len(drawn) == 2
    assert all("kd" not in h for h in steps)  # no off-policy tokens: nothing logged as off-policy
    assert all({"time_sampling_s", "time_teacher_s", "time_student_s"} <= h.keys() for h in steps)
    # Each step's on-policy figures recomputed from what was sampled: the targets are the completion
    # tokens (EOS included) that fit in data.max_length = 64, and on_policy_kd is the mean forward
    # KL(teacher || student) over them, in float64, with the student as it was when it sampled.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[0]).double().eval()
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[1]).double().eval()
    for h, (weights, prompts, completions) in zip(steps, drawn, strict=True):
        student.load_state_dict(weights)
        kl, tokens = 0.0, 0
        for p, c in zip(prompts, completions, strict=True):
            row = (p + c)[:64]
            n = len(row) - len(p)
            ids = torch.tensor([row])
            with torch.no_grad():
                log_p = torch.log_softmax(teacher(ids).logits[0, len(p) - 1 : -1].double(), -1)
                log_q = torch.log_softmax(student(ids).logits[0, len(p) - 1 : -1].double(), -1)
            kl += float((log_p.exp() * (log_p - log_q)).sum())
            tokens += n
        assert h["on_policy_tokens"] == tokens
        assert h["on_policy_kd"] == pytest.approx(kl / tokens, rel=1e-5, abs=1e-6)  # logged to 6 decimals
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs[0])
    samples = [json.loads(x) for x in (tmp_path / "out" / "on_policy_samples.jsonl").read_text().splitlines()]
    assert samples == [
        {
            "step": step,
            "kind": "on_policy",
            "prompt": tok.decode(p),
            "completion": tok.decode(c),
            "tokens": len(c),
        }
        for step, (_, prompts, completions) in enumerate(drawn)
        for p, c in zip(prompts, completions, strict=True)
    ]
    assert all(s["prompt"].endswith("assistant\n") for s in samples)
    assert (tmp_path / "out" / "student" / "config.json").is_file()


def test_seq_kd_trains_on_the_teachers_samples(tiny_model_dirs, tmp_path):
    _on_policy_run(tmp_path, tiny_model_dirs, {"lmbda": 0.0, "seq_kd": True}, steps=2, answers=False)
    steps = [h for h in _history(tmp_path) if "loss" in h]
    assert [(h["on_policy_steps"], h["seq_kd_steps"]) for h in steps] == [(0, 1), (0, 1)]
    assert all(h["kd"] > 0 and h["ce"] > 0 for h in steps)  # the configured CE + KD, on teacher samples
    samples = [json.loads(x) for x in (tmp_path / "out" / SAMPLES_FILE).read_text().splitlines()]
    assert {s["kind"] for s in samples} == {"seq_kd"} and len(samples) == 8


def test_replay_reuses_stored_samples(tiny_model_dirs, tmp_path):
    _on_policy_run(
        tmp_path, tiny_model_dirs, {"lmbda": 1.0, "replay_buffer_size": 1, "replay_ratio": 1.0}, steps=3
    )
    steps = [h for h in _history(tmp_path) if "loss" in h]
    assert [h["on_policy_steps"] for h in steps] == [1, 1, 1]
    samples = [json.loads(x) for x in (tmp_path / "out" / SAMPLES_FILE).read_text().splitlines()]
    assert {s["step"] for s in samples} == {0}  # sampled once, then replayed from the buffer


def test_replay_buffer_survives_a_resume(tiny_model_dirs, tmp_path):
    """The replay buffer (and the adaptive lmbda) are saved with each checkpoint: resumed after step 2,
    the run replays the step-0 samples instead of sampling afresh into an empty buffer."""
    import shutil

    import torch

    from lmdistill.training.on_policy import state_file
    from lmdistill.training.run import run

    cfg = _run_yaml(
        tmp_path,
        teacher={"name": str(tiny_model_dirs[0])},
        student={"name": str(tiny_model_dirs[1])},
        data={"train": str(_chat_data(tmp_path / "chat.jsonl")), "max_length": 64},
        distill={"kd_ratio": 0.5},
        on_policy={
            "max_new_tokens": 10,
            "log_samples_every": 1,
            "lmbda": 1.0,
            "replay_buffer_size": 1,
            "replay_ratio": 1.0,
        },
    )
    cfg.train.max_steps, cfg.train.save_steps = 3, 1
    run(cfg, log=lambda *a: None)
    out = tmp_path / "out"
    saved = torch.load(out / "checkpoint-2" / state_file(0), weights_only=True)
    assert saved["schedule"] == {"adaptive": 0.0, "last_eval": None} and len(saved["replay"]) == 1
    shutil.rmtree(out / "student")  # so the resume trains step 3 again
    (out / SAMPLES_FILE).unlink()
    cfg.train.resume_from_checkpoint = str(out / "checkpoint-2")
    run(cfg, log=lambda *a: None)
    history = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h and h["step"] > 2]
    assert [h["on_policy_steps"] for h in steps] == [1]
    assert (
        not (out / SAMPLES_FILE).exists() or not (out / SAMPLES_FILE).read_text().strip()
    )  # nothing sampled


def test_adaptive_schedule_runs_with_held_out_data(tiny_model_dirs, tmp_path):
    heldout = _chat_data(tmp_path / "heldout.jsonl", 4)
    cfg_sections = {"lmbda": 0.5, "schedule": "adaptive", "adaptive_step": 0.5}
    from lmdistill.training.run import run

    cfg = _run_yaml(
        tmp_path,
        teacher={"name": str(tiny_model_dirs[0])},
        student={"name": str(tiny_model_dirs[1])},
        data={"train": str(_chat_data(tmp_path / "chat.jsonl")), "eval": str(heldout), "max_length": 64},
        on_policy={"max_new_tokens": 8, **cfg_sections},
    )
    cfg.train.max_steps = cfg.train.save_steps = 4
    cfg.train.learning_rate = 0.05  # large steps: the held-out loss goes up and down
    cfg.train.extra["eval_steps"] = 1
    run(cfg, log=lambda _: None)
    history = _history(tmp_path)
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    lmbdas = [h["lmbda"] for h in history if "loss" in h]
    assert len(evals) == 4 and lmbdas[0] == 0.0
    # Trainer logs a step before evaluating it: the last log has seen the first three evaluations.
    rises = [sum(b > a for a, b in itertools.pairwise(evals[:n])) for n in range(1, 5)]
    assert lmbdas[1:] == [min(0.5, 0.5 * r) for r in rises[:3]], (evals, lmbdas)
    assert lmbdas[-1] > 0  # the check saw a rise


def test_server_gives_each_sampled_tokens_log_prob(served, tiny_tokenizer):
    from lmdistill.config import TeacherConfig
    from lmdistill.models.vocab import real_vocab_size
    from lmdistill.teachers.whitebox import InProcessTeacher, ServerTeacher, TeacherQuery

    url, model = served
    vocab = real_vocab_size(tiny_tokenizer)
    ids = torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    positions = torch.zeros_like(ids, dtype=torch.bool)
    positions[0, 3:11] = True
    positions[1, 2:8] = True
    query = TeacherQuery(ids, mask, positions)
    tokens = ids[:, 1:][positions[:, :-1]]
    source = ServerTeacher.connect(TeacherConfig(server=url), tiny_tokenizer, k=4, vocab=vocab)
    remote = source.score(query)
    assert remote.target_logprobs is not None and not torch.isnan(remote.target_logprobs).any()
    local = teacher_token_logprobs(InProcessTeacher(model).score(query), tokens, vocab)
    torch.testing.assert_close(teacher_token_logprobs(remote, tokens, vocab), local, rtol=0, atol=1e-5)
    assert (local < remote.sparse.logprobs[:, -1]).any()  # some sampled tokens lie outside the top 4


@pytest.mark.parametrize("estimator", ["divergence", "sampled"])
def test_on_policy_run_against_lmdistill_serve(served, tiny_model_dirs, tmp_path, monkeypatch, estimator):
    url, _ = served
    _, lines = _on_policy_run(
        tmp_path,
        tiny_model_dirs,
        {"lmbda": 0.5, "estimator": estimator},
        teacher={"server": url, "server_k": 8},
        steps=4,
    )
    assert any("no teacher in memory" in line for line in lines)
    steps = [h for h in _history(tmp_path) if "loss" in h]
    on = [h for h in steps if h["on_policy_steps"]]
    off = [h for h in steps if not h["on_policy_steps"]]
    assert on and off  # seed 42, lmbda 0.5: both kinds in 4 steps
    key = "on_policy_kd" if estimator == "divergence" else "on_policy_reverse_kl"
    assert all(torch.isfinite(torch.tensor(h[key])) for h in on)
    if estimator == "divergence":
        assert all(h[key] > 0 for h in on)
    assert all("kd" in h and h["kd"] > 0 for h in off)


# -- bad input -------------------------------------------------------------------------------------------------


def _yaml(tmp_path, **sections):
    import yaml

    cfg = {"data": {"train": str(_chat_data(tmp_path / "chat.jsonl")), "max_length": 64}}
    cfg["train"] = {"output_dir": str(tmp_path / "out"), "max_steps": 1}
    cfg["on_policy"] = {"max_new_tokens": 16}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"on_policy": {"lmbda": 1.5}}, "on_policy.lmbda must be in [0, 1]"),
        ({"on_policy": {"lmbda": 1, "max_new_tokens": 0}}, "on_policy.max_new_tokens must be at least 1"),
        ({"on_policy": {"estimator": "ppo"}}, "on_policy.estimator: unknown estimator 'ppo'"),
        ({"on_policy": {"schedule": "cosine"}}, "on_policy.schedule: unknown schedule 'cosine'"),
        (
            {"on_policy": {"lmbda": 1}, "distill": {"teacher_store": "somewhere"}},
            "distill.teacher_store holds scores of the data's fixed sequences",
        ),
        ({"on_policy": {"lmbda": 1, "schedule": "adaptive"}}, "set data.eval"),
        (
            {"on_policy": {"lmbda": 1, "replay_buffer_size": 4, "estimator": "sampled"}},
            "replay_buffer_size with estimator=sampled",
        ),
        ({"on_policy": {"lmbda": 1}, "train": {"fsdp": True}}, "on_policy with train.fsdp is not supported"),
        (
            {"on_policy": {"lmbda": 1}, "distill": {"cross_tokenizer": "uld"}},
            "on_policy with distill.cross_tokenizer is not supported",
        ),
    ],
)
def test_bad_settings_are_one_line_before_anything_loads(tmp_path, capsys, sections, message, monkeypatch):
    import lmdistill.training.run as train_run

    monkeypatch.setattr(train_run, "load_tokenizer", lambda *a, **k: pytest.fail("loaded a tokenizer"))
    cli_fails(["train", _yaml(tmp_path, **sections)], capsys, message)
    assert not (tmp_path / "out").exists()


def test_prompt_only_rows_with_off_policy_steps_are_refused(tmp_path, tiny_model_dirs, capsys, monkeypatch):
    import lmdistill.training.parts.models as train_models

    monkeypatch.setattr(train_models, "load_teacher", lambda *a, **k: pytest.fail("loaded the teacher"))
    path = _yaml(tmp_path, teacher={"name": str(tiny_model_dirs[0])}, on_policy={"lmbda": 0.5})
    _chat_data(tmp_path / "chat.jsonl", answers=False)
    cli_fails(["train", path], capsys, "no answer to train on", "on_policy.lmbda=1")


def test_a_server_without_log_probs_is_refused_before_the_student_loads(
    tmp_path, tiny_model_dirs, capsys, monkeypatch
):
    import lmdistill.training.parts.models as train_models
    from tests.teachers.faultserver import FaultServer

    monkeypatch.setattr(train_models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    server = FaultServer().start()
    try:
        path = _yaml(
            tmp_path,
            teacher={"name": str(tiny_model_dirs[0]), "server": server.url, "server_max_retries": 0},
            student={"name": str(tiny_model_dirs[1])},
            on_policy={"lmbda": 1, "estimator": "sampled"},
        )
        cli_fails(["train", path], capsys, "scored no token ids")
    finally:
        server.stop()


def test_config_lists_the_on_policy_keys():
    cfg = load_config(None, ["on_policy.lmbda=0.5", "on_policy.estimator=sampled"])
    assert cfg.on_policy.enabled and cfg.on_policy.estimator == "sampled"
    from lmdistill.config import describe_fields

    text = describe_fields()
    for key in ("lmbda", "seq_kd", "estimator", "samples_per_prompt", "log_samples_every", "top_p"):
        assert key in text


# -- two processes ---------------------------------------------------------------------------------------------


def test_two_processes_take_the_same_windows(tmp_path, tiny_model_dirs):
    """`torchrun` with 2 CPU processes: each samples its own prompts, both take the windows the schedule
    draws (a function of seed and step), and the run finishes (no process waits alone in a collective)."""
    from tests.training.test_multiprocess import _train

    teacher, student = tiny_model_dirs
    cfg = {
        "teacher": {"name": str(teacher)},
        "student": {"name": str(student)},
        "data": {"train": str(_chat_data(tmp_path / "chat.jsonl", 16)), "max_length": 48},
        "on_policy": {"lmbda": 0.5, "max_new_tokens": 8, "log_samples_every": 1},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 6,
            "seed": 3,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "logging_steps": 1,
            "save_steps": 1000,
            "extra": {"use_cpu": True, "disable_tqdm": True, "dataloader_drop_last": True},
        },
    }
    done = _train(tmp_path, "two", 2, cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = [json.loads(x) for x in (tmp_path / "out" / "on_policy_samples.jsonl").read_text().splitlines()]
    want = [step for step in range(6) if Schedule(OnPolicyConfig(lmbda=0.5), 3).kind(step) == ON]
    assert 0 < len(want) < 6
    assert sorted({s["step"] for s in samples}) == want
    assert all(
        n == 4 for n in [sum(s["step"] == w for s in samples) for w in want]
    )  # 2 micro-batches x 2 rows
    assert (tmp_path / "out" / "student" / "model.safetensors").is_file()
