"""Loading tokenizers and models from local folders, frozen teachers, dtypes, and not-found errors."""

from __future__ import annotations

import pytest
import torch

from lmdistill.errors import UserError
from lmdistill.models import (
    count_parameters,
    load_model,
    load_teacher,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)


@pytest.fixture
def offline(monkeypatch):
    """No hub access: fail fast instead of trying the network."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def test_load_model_and_tokenizer_from_folder(tiny_model_dirs, tiny_tokenizer):
    teacher_dir, student_dir = tiny_model_dirs
    model = load_model(teacher_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 4
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert next(model.parameters()).device.type == "cpu"
    tok = load_tokenizer(str(student_dir))
    assert tok.get_vocab() == tiny_tokenizer.get_vocab()
    assert load_model(str(student_dir)).config.num_hidden_layers == 2


def test_load_teacher_is_frozen(tiny_model_dirs):
    teacher = load_teacher(tiny_model_dirs[0])
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(not m.training for m in teacher.modules())


@pytest.mark.parametrize(
    ("name", "dtype"), [("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("float16", torch.float16)]
)
def test_dtype_option(tiny_model_dirs, name, dtype):
    model = load_model(tiny_model_dirs[1], dtype=name, device="auto")
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_dtype_auto_keeps_saved_dtype(tiny_model_dirs):
    assert {p.dtype for p in load_model(tiny_model_dirs[1], dtype="auto").parameters()} == {torch.float32}


def test_bad_dtype(tiny_model_dirs):
    with pytest.raises(UserError, match=r"unknown dtype 'float8'.*float32, bfloat16, float16, auto"):
        load_model(tiny_model_dirs[0], dtype="float8")
    assert resolve_dtype(torch.float16) is torch.float16


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_missing_model(offline, loader):
    with pytest.raises(UserError) as info:
        loader("no-such-org/no-such-model-xyz")
    message = str(info.value)
    assert message.startswith("model not found: no-such-org/no-such-model-xyz (not a local folder")
    assert "smollm2-135m" in message and "Hugging Face hub" in message


def test_missing_path(offline, tmp_path):
    with pytest.raises(UserError, match="model not found"):
        load_model(tmp_path / "nowhere" / "model")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="could not load model folder"):
        load_model(tmp_path / "empty")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "auto"])
def test_meta_model_is_the_loaded_architecture_without_weights(tmp_path, tiny_llama, dtype):
    """load_model(meta=True), for processes that get FSDP2 shards from process 0: the same names, shapes,
    dtypes and tied head as from_pretrained gives, every tensor on meta, from a folder without weights."""
    folder = tmp_path / "tied"
    tiny_llama(64, num_layers=2, tie=True).to(torch.bfloat16).save_pretrained(folder)
    whole = load_model(folder, dtype=dtype)
    (folder / "model.safetensors").unlink()  # config.json alone is read
    meta = load_model(folder, dtype=dtype, meta=True)
    assert type(meta) is type(whole)
    shapes = {n: (t.shape, t.dtype) for n, t in whole.state_dict().items()}
    assert {n: (t.shape, t.dtype) for n, t in meta.state_dict().items()} == shapes
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    assert meta.lm_head.weight is meta.model.embed_tokens.weight
    assert load_teacher(folder, meta=True).training is False


def test_meta_model_of_a_missing_folder(offline, tmp_path):
    with pytest.raises(UserError, match="model not found"):
        load_model(tmp_path / "nowhere", meta=True)


def test_count_parameters_tied(tiny_llama):
    untied, tied = tiny_llama(100, tie=False), tiny_llama(100, tie=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert count_parameters(untied) - count_parameters(tied) == 100 * 32
    assert count_parameters(untied) == sum(p.numel() for p in untied.parameters())
    # distinct Parameter objects sharing one storage still count once
    linear = torch.nn.Linear(4, 4, bias=False)
    module = torch.nn.Module()
    module.a, module.b = linear, torch.nn.Linear(4, 4, bias=False)
    module.b.weight = torch.nn.Parameter(linear.weight.data)
    assert count_parameters(module) == 16


def test_count_trainable_parameters(tiny_llama):
    model = tiny_llama(100, tie=False)
    model.lm_head.requires_grad_(False)
    assert count_parameters(model) - count_parameters(model, trainable_only=True) == 100 * 32
