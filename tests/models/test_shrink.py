"""Shrinking a teacher into a student: layer choice, exact weight copies, configs, generic layer lists."""

from __future__ import annotations

import pytest
import torch

from lmdistill.errors import UserError
from lmdistill.models import count_parameters, describe_sizes, evenly_spaced_layers, shrink_model
from lmdistill.models.shrink import find_decoder_layers

VOCAB = 64


def layer_state(model, prefix: str, index: int) -> dict[str, torch.Tensor]:
    start = f"{prefix}.{index}."
    return {k[len(start) :]: v for k, v in model.state_dict().items() if k.startswith(start)}


def non_layer_state(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix + ".")}


# --- evenly_spaced_layers --------------------------------------------------------------------------


def test_evenly_spaced_examples():
    assert evenly_spaced_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert evenly_spaced_layers(12, 4) == [0, 4, 7, 11]
    assert evenly_spaced_layers(6, 3) == [0, 3, 5]
    assert evenly_spaced_layers(5, 1) == [0]
    assert evenly_spaced_layers(1, 1) == [0]
    assert evenly_spaced_layers(7, 7) == list(range(7))
    assert evenly_spaced_layers(7, 2) == [0, 6]


def test_evenly_spaced_properties():
    for total in range(1, 41):
        for n in range(2, total + 1):
            chosen = evenly_spaced_layers(total, n)
            assert len(chosen) == n
            assert chosen[0] == 0 and chosen[-1] == total - 1
            assert chosen == sorted(set(chosen))


@pytest.mark.parametrize(("total", "n"), [(6, 0), (6, -1), (6, 7), (0, 1), (0, 0)])
def test_evenly_spaced_errors(total, n):
    with pytest.raises(UserError):
        evenly_spaced_layers(total, n)


# --- shrinking a Llama -----------------------------------------------------------------------------


def test_shrink_llama_copies_chosen_layers(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=6)
    student = shrink_model(teacher, num_layers=3)
    chosen = [0, 3, 5]
    assert student.config.num_hidden_layers == 3
    assert len(student.model.layers) == 3
    assert teacher.config.num_hidden_layers == 6 and len(teacher.model.layers) == 6
    assert student.config.lmdistill_teacher_layers == chosen
    for j, i in enumerate(chosen):
        s, t = layer_state(student, "model.layers", j), layer_state(teacher, "model.layers", i)
        assert s.keys() == t.keys() and s
        for key in s:
            assert torch.equal(s[key], t[key]), key
    s, t = non_layer_state(student, "model.layers"), non_layer_state(teacher, "model.layers")
    assert s.keys() == t.keys()
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= s.keys()
    for key in s:
        assert torch.equal(s[key], t[key]), key
    # attention layers are renumbered for the KV cache
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]


def test_student_is_trainable_and_independent(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=4)
    teacher.requires_grad_(False).eval()
    student = shrink_model(teacher, num_layers=2)
    assert student.training
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with torch.no_grad():
        student.model.embed_tokens.weight.add_(1.0)
    assert not torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)


def test_student_forward_and_generate(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=6)
    student = shrink_model(teacher, num_layers=3).eval()
    ids = torch.randint(3, VOCAB, (2, 7))
    out = student(input_ids=ids)
    assert out.logits.shape == (2, 7, VOCAB)
    generated = student.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape[1] <= 11


def test_shrink_to_all_layers_gives_identical_logits(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=4).eval()
    student = shrink_model(teacher, num_layers=4).eval()
    ids = torch.randint(3, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_explicit_layers(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=6)
    student = shrink_model(teacher, layers=[1, 4])
    assert student.config.num_hidden_layers == 2
    for j, i in enumerate([1, 4]):
        s, t = layer_state(student, "model.layers", j), layer_state(teacher, "model.layers", i)
        assert all(torch.equal(s[k], t[k]) for k in s)
    assert shrink_model(teacher, num_layers=2, layers=[2, 5]).config.lmdistill_teacher_layers == [2, 5]


@pytest.mark.parametrize(
    ("layers", "needle"),
    [([0, 6], "layer 6"), ([-1, 2], "layer -1"), ([3, 1], "layer 1"), ([2, 2], "layer 2"), ([], "empty")],
)
def test_bad_explicit_layers(tiny_llama, layers, needle):
    teacher = tiny_llama(VOCAB, num_layers=6)
    with pytest.raises(UserError, match=needle):
        shrink_model(teacher, layers=layers)


def test_shrink_argument_errors(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=4)
    with pytest.raises(UserError):
        shrink_model(teacher)
    with pytest.raises(UserError, match="num_layers=3"):
        shrink_model(teacher, num_layers=3, layers=[0, 1])
    with pytest.raises(UserError):
        shrink_model(teacher, num_layers=5)


def test_tied_embeddings_stay_tied(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=4, tie=True)
    student = shrink_model(teacher, num_layers=2)
    assert student.lm_head.weight is student.model.embed_tokens.weight
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    untied = shrink_model(tiny_llama(VOCAB, num_layers=4, tie=False), num_layers=2)
    assert count_parameters(untied) - count_parameters(student) == VOCAB * 32


def test_dtype_follows_teacher(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=4).to(torch.bfloat16)
    student = shrink_model(teacher, num_layers=2)
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)


def test_student_saves_and_reloads(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    student = shrink_model(tiny_llama(VOCAB, num_layers=4), num_layers=2).eval()
    student.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, VOCAB, (1, 5))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, student(input_ids=ids).logits)
    assert again.config.lmdistill_teacher_layers == [0, 3]


def test_describe_sizes(tiny_llama):
    teacher = tiny_llama(VOCAB, num_layers=6)
    student = shrink_model(teacher, num_layers=3)
    text = describe_sizes(teacher, student)
    assert "teacher" in text and "student" in text and "ratio" in text
    ratio = count_parameters(student) / count_parameters(teacher)
    assert f"{ratio:.2f}x" in text
    print(text)


# --- other architectures ---------------------------------------------------------------------------


def test_layer_types_are_subset():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=2,
    )
    teacher = Qwen2ForCausalLM(config)
    assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    student = shrink_model(teacher, layers=[1, 2, 3])
    assert student.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    teacher.eval()
    student.eval()
    ids = torch.randint(0, VOCAB, (1, 12))
    assert student(input_ids=ids).logits.shape == (1, 12, VOCAB)
    full = shrink_model(teacher, num_layers=4).eval()
    with torch.no_grad():
        assert torch.equal(full(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_gpt2_generic_layer_list():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB, n_layer=4, n_embd=32, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    )
    prefix, layers = find_decoder_layers(teacher)
    assert prefix == "transformer.h" and len(layers) == 4
    student = shrink_model(teacher, num_layers=2)
    assert student.config.n_layer == 2 and len(student.transformer.h) == 2
    for j, i in enumerate([0, 3]):
        s, t = layer_state(student, "transformer.h", j), layer_state(teacher, "transformer.h", i)
        assert s and all(torch.equal(s[k], t[k]) for k in s)
    assert torch.equal(student.transformer.wte.weight, teacher.transformer.wte.weight)
    assert student.lm_head.weight is student.transformer.wte.weight
    ids = torch.randint(0, VOCAB, (2, 6))
    assert student.eval()(input_ids=ids).logits.shape == (2, 6, VOCAB)
