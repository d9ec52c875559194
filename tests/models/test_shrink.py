"""Shrinking a teacher into a student: layer choice, exact weight copies, configs, generic layer lists."""

from __future__ import annotations

import pytest
import torch

from lmdistill.errors import UserError
from lmdistill.models import (
    count_parameters,
    describe_sizes,
    evenly_spaced_layers,
    narrow_defaults,
    shrink_model,
)
from lmdistill.models.shrink import find_decoder_layers

VOCAB = 64


def layer_state(model, prefix: str, index: int) -> dict[str, torch.Tensor]:
    start = f"{prefix}.{index}."
    return {k[len(start) :]: v for k, v in model.state_dict().items() if k.startswith(start)}


def non_layer_state(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix + ".")}


def teacher_key(key: str, prefix: str, chosen: list[int]) -> str:
    """The teacher's state-dict key for a student key (student layer j is teacher layer chosen[j])."""
    start = prefix + "."
    if not key.startswith(start):
        return key
    index, rest = key[len(start) :].split(".", 1)
    return f"{start}{chosen[int(index)]}.{rest}"


def assert_truncated_copy(student, teacher, prefix: str, chosen: list[int]) -> int:
    """Every student tensor is the leading slice of its teacher tensor; returns how many were cut."""
    t_state = teacher.state_dict()
    cut = 0
    for key, value in student.state_dict().items():
        source = t_state[teacher_key(key, prefix, chosen)]
        assert value.dim() == source.dim() and all(
            s <= t for s, t in zip(value.shape, source.shape, strict=True)
        ), key
        assert torch.equal(value, source[tuple(slice(0, n) for n in value.shape)]), key
        cut += value.shape != source.shape
    return cut


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


# --- narrower students -----------------------------------------------------------------------------


def wide_llama(tiny_llama, **kwargs):
    """Teacher for the width tests: hidden 64, 8 heads of 8, 4 KV heads, MLP 128, 4 layers."""
    return tiny_llama(VOCAB, num_layers=4, hidden=64, heads=8, kv_heads=4, **kwargs)


def smollm2_like_config(**overrides):
    from transformers import LlamaConfig

    sizes = dict(
        hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536
    )
    return LlamaConfig(**{**sizes, **overrides})


def test_narrow_llama_config_and_truncated_weights(tiny_llama):
    teacher = wide_llama(tiny_llama).eval()
    assert teacher.config.intermediate_size == 128 and teacher.config.head_dim == 8
    student = shrink_model(
        teacher, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2
    )
    c = student.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (32, 4, 2, 8)
    assert c.intermediate_size == 64 and c.num_hidden_layers == 2 and c.lmdistill_teacher_layers == [0, 3]
    t = teacher.config
    assert (t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.intermediate_size) == (
        64,
        8,
        4,
        128,
    )
    assert t.num_hidden_layers == 4 and len(teacher.model.layers) == 4
    assert assert_truncated_copy(student, teacher, "model.layers", [0, 3]) == len(student.state_dict())

    # whole heads: student q head h (and KV head h) is teacher head h, restricted to the first 32 channels
    s_attn, t_attn = student.model.layers[1].self_attn, teacher.model.layers[3].self_attn
    assert s_attn.q_proj.weight.shape == (32, 32) and s_attn.k_proj.weight.shape == (16, 32)
    assert torch.equal(s_attn.q_proj.weight.view(4, 8, 32), t_attn.q_proj.weight.view(8, 8, 64)[:4, :, :32])
    assert torch.equal(s_attn.v_proj.weight.view(2, 8, 32), t_attn.v_proj.weight.view(4, 8, 64)[:2, :, :32])
    assert torch.equal(s_attn.o_proj.weight, t_attn.o_proj.weight[:32, :32])
    assert student.model.layers[1].mlp.down_proj.weight.shape == (32, 64)
    assert student.model.embed_tokens.weight.shape == (VOCAB, 32) and student.lm_head.weight.shape == (
        VOCAB,
        32,
    )

    assert student.training and all(p.requires_grad for p in student.parameters())
    assert student.num_parameters() < teacher.num_parameters()
    student.eval()
    ids = torch.randint(3, VOCAB, (2, 7))
    with torch.no_grad():
        logits = student(input_ids=ids).logits
    assert logits.shape == (2, 7, VOCAB) and torch.isfinite(logits).all()
    generated = student.generate(ids[:1], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape[1] <= 10


def test_narrow_tied_embeddings_stay_tied(tiny_llama):
    teacher = wide_llama(tiny_llama, tie=True)
    student = shrink_model(
        teacher, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2
    )
    assert student.config.tie_word_embeddings
    assert student.lm_head.weight is student.model.embed_tokens.weight
    assert torch.equal(student.lm_head.weight, teacher.model.embed_tokens.weight[:, :32])
    assert_truncated_copy(student, teacher, "model.layers", [0, 3])
    untied = shrink_model(wide_llama(tiny_llama), num_layers=2, hidden_size=32, num_key_value_heads=2)
    assert count_parameters(untied) - count_parameters(student) == VOCAB * 32


def test_narrow_only_one_width(tiny_llama):
    teacher = wide_llama(tiny_llama)
    mlp = shrink_model(teacher, layers=[1, 2], intermediate_size=48)
    c = mlp.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (
        64,
        8,
        4,
        48,
    )
    assert assert_truncated_copy(mlp, teacher, "model.layers", [1, 2]) == 3 * 2  # gate, up, down per layer
    heads = shrink_model(teacher, num_layers=2, num_attention_heads=2)
    c = heads.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (64, 2, 2, 8)
    assert c.intermediate_size == 128
    assert_truncated_copy(heads, teacher, "model.layers", [0, 3])
    ids = torch.randint(3, VOCAB, (1, 5))
    assert torch.isfinite(heads.eval()(input_ids=ids).logits).all()


def test_narrow_defaults_from_hidden_size(tiny_llama):
    teacher = wide_llama(tiny_llama)
    assert narrow_defaults(teacher.config, 32) == {
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 64,
        "head_dim": 8,
    }
    student = shrink_model(teacher, num_layers=2, hidden_size=32)
    c = student.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (
        32,
        4,
        4,
        64,
    )
    assert narrow_defaults(teacher.config, 16)["num_key_value_heads"] == 2
    assert narrow_defaults(teacher.config, 24)["num_key_value_heads"] == 3
    assert narrow_defaults(teacher.config, 40)["num_key_value_heads"] == 1  # 5 heads, teacher has 4 KV heads
    # no width given: everything is the teacher's
    assert narrow_defaults(teacher.config) == {
        "hidden_size": 64,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
        "head_dim": 8,
    }


@pytest.mark.parametrize(
    ("hidden", "heads", "kv", "inter"),
    [
        (576, 9, 3, 1536),
        (512, 8, 2, 1368),  # 1536 * 512 / 576 = 1365.3 -> 1368
        (448, 7, 1, 1192),  # 7 heads: only 1 divides it among 1..3
        (384, 6, 3, 1024),
        (256, 4, 2, 680),  # 682.7 -> 680
        (192, 3, 3, 512),
        (64, 1, 1, 168),
    ],
)
def test_narrow_defaults_smollm2_sizes(hidden, heads, kv, inter):
    widths = narrow_defaults(smollm2_like_config(), hidden)
    assert widths == {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": inter,
        "head_dim": 64,
    }
    assert widths["intermediate_size"] % 8 == 0 or hidden == 576


def test_narrow_defaults_intermediate_rounding():
    # 120 * 32 / 64 = 60 = 7.5 * 8 -> rounds half up to 64
    config = smollm2_like_config(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=8)
    config.intermediate_size = 120
    assert narrow_defaults(config, 32)["intermediate_size"] == 64
    config.intermediate_size = 100  # 50 -> 48
    assert narrow_defaults(config, 32)["intermediate_size"] == 48
    config.intermediate_size = 6  # at least 8 after rounding, but never more than the teacher's
    assert narrow_defaults(config, 32)["intermediate_size"] == 6
    config.intermediate_size = 20  # 2.5 -> 8 (the smallest multiple)
    assert narrow_defaults(config, 8)["intermediate_size"] == 8


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"hidden_size": 128}, "larger than the teacher"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"hidden_size": -32}, "hidden_size must be a positive integer"),
        ({"hidden_size": 32.0}, "hidden_size must be a positive integer"),
        ({"hidden_size": True}, "hidden_size must be a positive integer"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer"),
        ({"num_key_value_heads": -1}, "num_key_value_heads must be a positive integer"),
        ({"intermediate_size": 0}, "intermediate_size must be a positive integer"),
        ({"hidden_size": 36}, "not a multiple of the teacher's head size"),
        ({"num_attention_heads": 16}, "more than the teacher's"),
        ({"num_key_value_heads": 8}, "more than the teacher's"),
        ({"intermediate_size": 256}, "larger than the teacher's"),
        ({"num_attention_heads": 6, "num_key_value_heads": 4}, "not a multiple of num_key_value_heads"),
        (
            {"hidden_size": 40, "num_attention_heads": 3, "num_key_value_heads": 1},
            "rejects the student's sizes",
        ),
    ],
)
def test_narrow_errors(tiny_llama, kwargs, needle):
    teacher = wide_llama(tiny_llama)
    with pytest.raises(UserError, match=needle):
        shrink_model(teacher, num_layers=2, **kwargs)
    assert teacher.config.hidden_size == 64 and teacher.config.num_hidden_layers == 4


def test_no_width_options_behave_as_before(tiny_llama):
    teacher = wide_llama(tiny_llama, tie=True)
    plain = shrink_model(teacher, num_layers=2)
    # the pre-width behaviour: exact copies of the chosen layers and of everything else
    assert assert_truncated_copy(plain, teacher, "model.layers", [0, 3]) == 0
    expected = {
        k: v
        for k, v in teacher.state_dict().items()
        if not k.startswith(("model.layers.1.", "model.layers.2."))
    }
    expected = {k.replace("model.layers.3.", "model.layers.1."): v for k, v in expected.items()}
    got = plain.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    # the config differs from the teacher's only by the layer count and the recorded layers (and
    # `dtype`, which building the student from its config fills in)
    diff = {k for k, v in plain.config.to_dict().items() if teacher.config.to_dict().get(k, object()) != v}
    assert diff - {"dtype"} == {"num_hidden_layers", "lmdistill_teacher_layers"}
    # full-width options are the same student
    full = shrink_model(teacher, num_layers=2, hidden_size=64, num_attention_heads=8, num_key_value_heads=4)
    assert full.config.to_dict() == plain.config.to_dict()
    assert all(torch.equal(full.state_dict()[k], got[k]) for k in got)


def test_narrow_student_saves_and_reloads(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    student = shrink_model(wide_llama(tiny_llama), num_layers=2, hidden_size=32, num_key_value_heads=2).eval()
    student.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    c = again.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (32, 4, 2, 8)
    ids = torch.randint(3, VOCAB, (1, 5))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, student(input_ids=ids).logits)


def test_narrow_dtype_follows_teacher(tiny_llama):
    teacher = wide_llama(tiny_llama).to(torch.bfloat16)
    student = shrink_model(teacher, num_layers=2, hidden_size=32)
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight[:32])


def test_describe_sizes_hidden_column(tiny_llama):
    teacher = wide_llama(tiny_llama)
    assert "hidden" not in describe_sizes(teacher, shrink_model(teacher, num_layers=2))
    student = shrink_model(teacher, num_layers=2, hidden_size=32)
    text = describe_sizes(teacher, student)
    header, t_row, s_row, ratio_row = text.splitlines()
    assert "hidden" in header and "64" in t_row.split() and "32" in s_row.split()
    assert ratio_row.split()[:3] == ["ratio", "0.50", "0.50"]
    assert f"{count_parameters(student) / count_parameters(teacher):.2f}x" in ratio_row
    print(text)


def test_narrow_qwen2_without_head_dim_setting():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    teacher = Qwen2ForCausalLM(config)
    student = shrink_model(teacher, num_layers=2, hidden_size=16)
    c = student.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (
        16,
        2,
        2,
        32,
    )
    assert getattr(c, "head_dim", None) is None  # not a Qwen2 setting: head size is hidden / heads = 8
    assert student.model.layers[0].self_attn.q_proj.bias.shape == (16,)
    assert assert_truncated_copy(student, teacher, "model.layers", [0, 2]) > 0
    ids = torch.randint(0, VOCAB, (1, 6))
    assert torch.isfinite(student.eval()(input_ids=ids).logits).all()
    with pytest.raises(UserError, match="no head_dim setting"):
        shrink_model(teacher, num_layers=2, hidden_size=16, num_attention_heads=4)


def test_narrow_gpt2_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    teacher = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64))
    with pytest.raises(UserError, match="no num_key_value_heads"):
        shrink_model(teacher, num_layers=1, hidden_size=16)
    assert shrink_model(teacher, num_layers=1).config.n_embd == 32  # layers only: still fine


def test_narrow_fused_projections_are_refused():
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    teacher = Phi3ForCausalLM(config)
    assert "model.layers.0.self_attn.qkv_proj.weight" in teacher.state_dict()
    with pytest.raises(UserError, match="fused"):
        shrink_model(teacher, num_layers=1, hidden_size=32, num_key_value_heads=2)
