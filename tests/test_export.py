"""`lmdistill export`: clean HF folders from model folders, train outputs and LoRA adapters; dtype; int8."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmdistill.errors import UserError
from lmdistill.export import (
    QUANTIZATION_FILE,
    export_model,
    load_exported,
    quantization_report,
)

IDS = torch.tensor([[5, 17, 42, 99, 7, 123, 64, 250, 3, 11, 80, 200]])
TRAINING_ONLY = (
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "rng_state_1.pth",
    "trainer_state.json",
    "training_args.bin",
    "hint_projections.safetensors",
)


def quiet(_msg):
    pass


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def reload(folder, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


@pytest.fixture
def run_dir(tmp_path, tiny_model_dirs):
    """A fake `lmdistill train` output: run/student (+ checkpoint leftovers inside) and hint projections beside."""
    _, student = tiny_model_dirs
    run = tmp_path / "run"
    shutil.copytree(student, run / "student")
    (run / "student" / "lmdistill_config.yaml").write_text("teacher:\n  name: tiny\n", encoding="utf-8")
    for name in TRAINING_ONLY:
        (run / "student" / name).write_bytes(b"x")
    (run / "hint_projections.safetensors").write_bytes(b"x")
    return run


def test_export_run_folder_same_logits_and_clean(run_dir, tmp_path):
    out = export_model(run_dir, tmp_path / "out", log=quiet)
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"} <= names
    assert "lmdistill_config.yaml" in names
    assert not names & set(TRAINING_ONLY)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]  # temp folder gone
    src = reload(run_dir / "student")
    new = reload(out)
    torch.testing.assert_close(logits(new), logits(src), atol=1e-6, rtol=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert (
        tok("Hello world")["input_ids"]
        == AutoTokenizer.from_pretrained(run_dir / "student")("Hello world")["input_ids"]
    )
    assert tok.chat_template


def test_export_lora_adapter_is_merged(tiny_model_dirs, tmp_path):
    peft = pytest.importorskip("peft")
    _, student = tiny_model_dirs
    base = reload(student)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, param in lora.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter actually change the model
            torch.nn.init.normal_(param, std=0.5)
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        student
    )
    expected = logits(lora.eval())
    assert not torch.allclose(expected, logits(reload(student)), atol=1e-3)

    out = export_model(adapter, tmp_path / "merged", log=quiet)
    assert not (out / "adapter_config.json").exists()
    assert (out / "tokenizer.json").is_file()  # taken from the base: the adapter folder has none
    torch.testing.assert_close(logits(reload(out)), expected, atol=1e-5, rtol=1e-5)


def test_export_bfloat16(tiny_model_dirs, tmp_path):
    _, student = tiny_model_dirs
    out = export_model(student, tmp_path / "bf16", dtype="bfloat16", log=quiet)
    model = reload(out)  # dtype="auto" by default: keeps what the folder stores
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    torch.testing.assert_close(logits(model), logits(reload(student)), atol=5e-2, rtol=0)


def test_export_int8_dynamic(tiny_model_dirs, tmp_path):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    _, student = tiny_model_dirs
    lines = []
    out = export_model(student, tmp_path / "int8", quantize="int8-dynamic", log=lines.append)
    assert json.loads((out / QUANTIZATION_FILE).read_text()) == {
        "method": "int8-dynamic",
        "modules": "Linear",
    }
    assert any("top-1 agreement" in line for line in lines)
    plain = reload(out)  # still an ordinary HF folder with float weights
    assert {p.dtype for p in plain.parameters()} == {torch.float32}

    model = load_exported(out)
    assert isinstance(model.model.layers[0].self_attn.q_proj, DynamicLinear)
    assert isinstance(model.model.layers[-1].mlp.down_proj, DynamicLinear)
    assert isinstance(model.lm_head, DynamicLinear)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    q, f = logits(model), logits(plain)
    agreement = (q.argmax(-1) == f.argmax(-1)).float().mean().item()
    assert agreement >= 0.8, agreement
    assert (q - f).abs().max().item() < 0.1

    texts = ["Hello world, how are you today?", "The cat sat on the mat."]
    report = quantization_report(out, texts, repeats=1)
    # The report's figures recomputed here from the two models above (the float folder and the int8 model
    # `load_exported` builds from it), text by text, all positions.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = [tokenizer(t, return_tensors="pt")["input_ids"] for t in texts]
    float_logits = [logits(plain, i)[0] for i in ids]
    int8_logits = [logits(model, i)[0] for i in ids]
    n = sum(i.shape[1] for i in ids)
    same = sum(
        int((f.argmax(-1) == q.argmax(-1)).sum()) for f, q in zip(float_logits, int8_logits, strict=True)
    )
    diff = torch.cat([(f - q).abs().flatten() for f, q in zip(float_logits, int8_logits, strict=True)])
    assert report["tokens"] == n and report["texts"] == len(texts)
    assert report["top1_agreement"] == pytest.approx(same / n, abs=1e-9)
    assert report["max_abs_logit_diff"] == pytest.approx(float(diff.max()), rel=1e-4, abs=1e-6)
    assert report["mean_abs_logit_diff"] == pytest.approx(float(diff.mean()), rel=1e-4, abs=1e-6)
    assert report["speedup"] == pytest.approx(report["int8_tokens_per_s"] / report["float_tokens_per_s"])


def test_load_exported_plain_folder_is_not_quantised(tiny_model_dirs):
    _, student = tiny_model_dirs
    model = load_exported(student)
    assert type(model.lm_head) is torch.nn.Linear


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "int4"}, "unknown dtype"),
        ({"quantize": "int4"}, "unknown quantisation"),
        ({"quantize": "int8-dynamic", "dtype": "bfloat16"}, "float32"),
    ],
)
def test_bad_options(tiny_model_dirs, tmp_path, kwargs, match):
    _, student = tiny_model_dirs
    with pytest.raises(UserError, match=match):
        export_model(student, tmp_path / "out", log=quiet, **kwargs)
    assert not (tmp_path / "out").exists()


def test_missing_or_invalid_source(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        export_model(tmp_path / "nope", tmp_path / "out", log=quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        export_model(tmp_path / "empty", tmp_path / "out", log=quiet)


def test_existing_output_needs_force(tiny_model_dirs, tmp_path):
    _, student = tiny_model_dirs
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(UserError, match="--force"):
        export_model(student, out, log=quiet)
    with pytest.raises(UserError, match="not a previous export"):  # --force replaces only an export
        export_model(student, out, force=True, log=quiet)
    assert (out / "old.txt").read_text() == "keep me"
    (tmp_path / "empty_out").mkdir()  # an empty folder is fine without --force
    export_model(student, tmp_path / "empty_out", log=quiet)
    with pytest.raises(UserError, match="--force"):
        export_model(student, tmp_path / "empty_out", log=quiet)
    export_model(student, tmp_path / "empty_out", force=True, log=quiet)  # an earlier export: replaced
    assert (tmp_path / "empty_out" / "model.safetensors").is_file()
    with pytest.raises(UserError, match="source"):
        export_model(student, student, force=True, log=quiet)


def test_int8_export_evaluates_against_its_float_source(tiny_model_dirs, tmp_path):
    """An int8 folder is evaluated as int8: agreement and perplexity run through its quantised head."""
    from lmdistill.data import tokenize_records
    from lmdistill.eval.scoring import score_tokens
    from lmdistill.export import export_model
    from lmdistill.models import load_model, load_tokenizer

    _, student = tiny_model_dirs
    out = export_model(student, tmp_path / "int8", quantize="int8-dynamic", log=lambda *_: None)
    tok = load_tokenizer(out)
    float_model, int8_model = load_model(student), load_model(out, quantized=True)
    assert not isinstance(int8_model.get_output_embeddings(), torch.nn.Linear)
    features, _ = tokenize_records([{"text": "Hello world, the cat sat on the mat."}], tok, 32)
    result = score_tokens(int8_model, features, vocab=len(tok), pad_token_id=0, teacher=float_model)
    assert result.tokens > 0 and result.top1 > 0.5 and result.kl < 0.1


def test_head_rows_of_an_int8_model(tiny_model_dirs, tmp_path):
    from lmdistill.export import export_model
    from lmdistill.models import head_rows, load_model

    _, student = tiny_model_dirs
    out = export_model(student, tmp_path / "q", quantize="int8-dynamic", log=lambda *_: None)
    assert head_rows(load_model(out, quantized=True)) == head_rows(load_model(student))


def test_parameter_count_of_an_int8_model(tiny_model_dirs, tmp_path):
    from lmdistill.export import export_model
    from lmdistill.models import count_parameters, load_model

    _, student = tiny_model_dirs
    out = export_model(student, tmp_path / "q", quantize="int8-dynamic", log=lambda *_: None)
    float_model, int8_model = load_model(student), load_model(out, quantized=True)
    # tied embeddings count once in float; the quantised head is a copy of its own
    tied = float_model.get_output_embeddings().weight.numel() if float_model.config.tie_word_embeddings else 0
    assert count_parameters(int8_model) == count_parameters(float_model) + tied


def test_quantize_keeps_named_layers_in_float(tiny_llama):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from lmdistill.models.quantize import quantize_model

    model = tiny_llama(64, num_layers=2)
    q = quantize_model(model, keep_float=("down_proj",), inplace=False)
    kinds = {
        name: type(m) for name, m in q.named_modules() if name.endswith(("down_proj", "up_proj", "q_proj"))
    }
    assert len(kinds) == 6
    for name, kind in kinds.items():
        assert (kind is torch.nn.Linear) == name.endswith("down_proj"), name
    assert isinstance(q.lm_head, DynamicLinear)
    everything = quantize_model(model, inplace=False)
    assert isinstance(everything.model.layers[0].mlp.down_proj, DynamicLinear)


def test_untie_embeddings_for_a_vllm_server(tiny_tokenizer_dir, tmp_path):
    """`lmdistill export SRC OUT --untie-embeddings`: the head written as its own tensor equal to the
    embedding, tie_word_embeddings false, the same logits, the tokenizer beside it."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from lmdistill.cli import main
    from tests.conftest import make_tiny_llama

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tied = make_tiny_llama(len(tok), tie=True, seed=3)
    tied.save_pretrained(tmp_path / "tied")
    tok.save_pretrained(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(str(tmp_path / "tied" / "model.safetensors"))

    assert main(["export", str(tmp_path / "tied"), str(tmp_path / "served"), "--untie-embeddings"]) == 0
    out = tmp_path / "served"
    weights = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(
        weights["lm_head.weight"], weights["model.embed_tokens.weight"], rtol=0, atol=0
    )
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert json.loads((out / "lmdistill_export.json").read_text())["untied"] is True
    assert (out / "tokenizer_config.json").is_file()
    served = reload(out)
    assert served.lm_head.weight.data_ptr() != served.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits(served), logits(tied.eval()), rtol=0, atol=0)

    again = export_model(out, tmp_path / "again", untie_embeddings=True, log=quiet)  # already untied: a copy
    torch.testing.assert_close(logits(reload(again)), logits(served), rtol=0, atol=0)


def test_untie_embeddings_with_quantize_is_one_line(tiny_model_dirs, tmp_path, capsys):
    from tests.conftest import cli_fails

    _, student = tiny_model_dirs
    out = tmp_path / "out"
    cli_fails(
        ["export", student, out, "--untie-embeddings", "--quantize", "int8-dynamic"],
        capsys,
        "--untie-embeddings writes a folder for vLLM",
        "drop one of them",
    )
    assert not out.exists()
