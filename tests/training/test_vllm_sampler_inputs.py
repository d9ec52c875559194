"""on_policy.sampler=vllm: bad settings, and a server that is not there, are one line (exit 2) before any
model loads. Everything a server answers (syncs, samples, the check, `torchrun`, resume, a reload that
fails mid-run) and its refusals (sync route, model name, vocabulary, log-prob mode, a tied folder, a
broken engine) run against real vLLM servers in tests/vllm/ (test_vllm_sampler*.py): no fake vLLM."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import cli_fails

ROW = {"messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi."}]}


@pytest.fixture
def no_model_loads(monkeypatch):
    import lmdistill.training.parts.models as train_models

    monkeypatch.setattr(train_models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(train_models, "load_teacher", lambda *a, **k: pytest.fail("loaded the teacher"))


def _yaml(tmp_path, tiny_model_dirs, *, student=None, on_policy=None, vllm_sampler=None, **train) -> str:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    cfg = {
        "teacher": {"name": str(tiny_model_dirs[0])},
        "student": {"name": str(tiny_model_dirs[1]), **(student or {})},
        "data": {"train": str(data), "max_length": 48},
        "on_policy": {"lmbda": 1.0, "max_new_tokens": 8, "sampler": "vllm", **(on_policy or {})},
        "vllm_sampler": vllm_sampler or {},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 1,
            "per_device_train_batch_size": 1,
            "extra": {"use_cpu": True, "disable_tqdm": True},
            **train,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "on_policy.sampler=vllm needs vllm_sampler.url"),
        ({"on_policy": {"sampler": "sglang"}}, "on_policy.sampler: unknown sampler 'sglang'"),
        ({"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync": "lora"}}, "needs a LoRA student"),
        (
            {"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync": "reload"}, "student": {"lora_r": 4}},
            "sync=reload with a LoRA student",
        ),
        (
            {"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync": "transfer"}, "student": {"lora_r": 4}},
            "sync=transfer with a LoRA student",
        ),
        (
            {"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync": "nccl"}},
            "vllm_sampler.sync: unknown sync",
        ),
        (
            {"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync_every": 0}},
            "sync_every must be at least 1",
        ),
        ({"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "check_atol": 0}}, "check_atol must be a finite"),
        (
            {
                "vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync_every": 2},
                "on_policy": {"estimator": "sampled"},
            },
            "sync_every=2 with on_policy.estimator=sampled",
        ),
    ],
)
def test_bad_settings_are_one_line(tmp_path, tiny_model_dirs, capsys, no_model_loads, settings, message):
    cli_fails(["train", _yaml(tmp_path, tiny_model_dirs, **settings)], capsys, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for trainers without CUDA")
def test_transfer_on_a_trainer_without_cuda_is_one_line(tmp_path, tiny_model_dirs, capsys, no_model_loads):
    """Checked with the config, before any server is asked or model loaded (the url is not even reachable)."""
    path = _yaml(tmp_path, tiny_model_dirs, vllm_sampler={"url": "http://127.0.0.1:9/v1", "sync": "transfer"})
    cli_fails(
        ["train", path],
        capsys,
        "vllm_sampler.sync=transfer broadcasts the student's weights over NCCL from a GPU",
        "torch.cuda.is_available() is false",
        "on CPU use sync=reload (full student) or sync=lora (LoRA student)",
    )


def test_an_unreachable_server_is_one_line_before_any_model_loads(
    tmp_path, tiny_model_dirs, capsys, no_model_loads
):
    from tests.vllm.vllmserver import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    path = _yaml(tmp_path, tiny_model_dirs, vllm_sampler={"url": url, "timeout": 5})
    cli_fails(["train", path], capsys, f"vllm_sampler.url {url} is not reachable", "start the student's vLLM")
