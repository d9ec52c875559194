"""Shared fixtures: a real byte-level BPE tokenizer with a ChatML template, and tiny Llama models.

Nothing here touches the network: the tokenizer is trained in milliseconds on a few sentences and
saved as an ordinary Hugging Face tokenizer folder; models are built from config with random weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Hello world, how are you today? I am fine, thank you very much.",
    "The cat sat on the mat and the dog slept by the door.",
    "Alice has 3 apples and buys 2 more, then eats 1. How many apples does she have?",
    "What is the capital of France? The capital of France is Paris.",
    "Distillation trains a small student to imitate a large teacher.",
    '{"answer": "yes", "reason": "because"} 0 1 2 3 4 5 6 7 8 9',
]


def build_tiny_tokenizer(path: Path, vocab_size: int = 320):
    """Train a byte-level BPE tokenizer and save it to `path`; returns the loaded HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def build_sentencepiece_tokenizer(path, *, lowercase: bool):
    """A second real tokenizer: Metaspace (▁) pre-tokenizer, BPE with byte fallback, optional normaliser."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    if lowercase:
        tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<bos>", "<eos>", *byte_tokens])
    tk.train_from_iterator(CORPUS * 4, trainer)
    from tokenizers import processors

    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tk.token_to_id("<bos>"))]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(path)
    return path


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def make_tiny_llama(
    vocab_size: int,
    *,
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    tie: bool = False,
    seed: int = 0,
):
    """A random Llama causal LM small enough for a unit test (fp32, eval-free, no dropout)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def tiny_llama():
    """Factory: `tiny_llama(vocab_size, num_layers=2, hidden=32, ...)`."""
    return make_tiny_llama


@pytest.fixture
def two_tiny_teachers(tiny_model_dirs, tiny_llama, tmp_path):
    """(teacher a, teacher b, student) folders: b another tiny model whose head is scaled x30, so its
    distributions are far from a's (a row scored by the wrong teacher changes the loss a lot)."""
    from lmdistill.models import load_tokenizer

    a, student = tiny_model_dirs
    tok = load_tokenizer(a)
    b = tmp_path / "b_teacher"
    model = tiny_llama(len(tok), hidden=48, seed=7)
    model.lm_head.weight.data.mul_(30)
    model.save_pretrained(b)
    tok.save_pretrained(b)
    return a, b, student


@pytest.fixture
def tiny_model_dirs(tmp_path, tiny_tokenizer_dir):
    """A saved teacher (4 layers) and student (2 layers) sharing the tiny tokenizer; returns (teacher, student)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    out = []
    for name, layers, seed in (("teacher", 4, 1), ("student", 2, 2)):
        d = tmp_path / name
        make_tiny_llama(len(tok), num_layers=layers, seed=seed).save_pretrained(d)
        tok.save_pretrained(d)
        out.append(d)
    return tuple(out)


def float64_token_scores(model, teacher, features, vocab: int) -> tuple[float, float, float, int]:
    """The held-out figures the hard way: every logit at once, in float64, one example at a time (no
    padding), over the target tokens (labels[1:] != -100). Returns (perplexity of `model`, top-1
    agreement with `teacher`, mean KL(teacher || model) in nats, target tokens)."""
    import math

    ce = kl = agree = 0.0
    n = 0
    with torch.no_grad():
        for f in features:
            ids = torch.tensor([f["input_ids"]])
            y = torch.tensor(f["labels"][1:])
            keep = y != -100
            s = model(input_ids=ids).logits[0, :-1, :vocab].double()[keep]
            t = teacher(input_ids=ids).logits[0, :-1, :vocab].double()[keep]
            logq, logp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
            ce -= logq.gather(1, y[keep, None]).sum().item()
            kl += (logp.exp() * (logp - logq)).sum().item()
            agree += (s.argmax(-1) == t.argmax(-1)).sum().item()
            n += int(keep.sum())
    return math.exp(ce / n), agree / n, kl / n, n


def cli_fails(argv, capsys, *match: str) -> str:
    """Run `lmdistill ARGV` in process; it must exit 2 with one error line holding every `match`, and no
    traceback. Returns stderr."""
    from lmdistill.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    for m in match:
        assert m in err, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # progress bars aside
    assert len(errors) == 1, err
    return err


def write_run_config(tmp_path: Path, teacher: Path, student: Path, rows: list[dict], **train) -> Path:
    """A `lmdistill train` config over the tiny models and `rows` (written to train.jsonl), saving every
    2 steps into tmp_path/out, no progress bar; `train` overrides train.* keys. Returns the YAML path."""
    import json

    import yaml

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "teacher": {"name": str(teacher)},
        "student": {"name": str(student)},
        "data": {"train": str(data), "max_length": 48},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "save_steps": 2,
            "logging_steps": 1,
            "extra": {"use_cpu": True, "disable_tqdm": True},
            **train,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (tiny models on a shared machine), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_training_args(tmp_path, **kw):
    """TrainingArguments for the tiny in-process trainer tests: SGD, constant lr, no saving, CPU, seeded."""
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=0.05,
        max_steps=2,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    base.update(kw)
    return TrainingArguments(**base)


@pytest.fixture
def served(tiny_model_dirs):
    """The tiny teacher behind `lmdistill serve` on loopback: (url, model)."""
    from lmdistill.models import load_model, load_tokenizer
    from lmdistill.serve import ServerThread, create_app
    from lmdistill.teachers.local import LocalTeacher

    model = load_model(tiny_model_dirs[0]).eval()
    app = create_app(LocalTeacher(model, load_tokenizer(tiny_model_dirs[0]), name="tiny"), model_name="tiny")
    with ServerThread(app) as server:
        yield server.url, model


@pytest.fixture(scope="session")
def cross_tokenizer_teachers(tmp_path_factory):
    """(student, plain teacher, cross teacher) folders: a byte-level BPE student; a teacher of the same
    tokenizer whose head is scaled x30 (far from the others); a teacher with another, SentencePiece-style
    tokenizer that adds <bos> (a teacher for `teachers[i].cross_tokenizer`)."""
    base = tmp_path_factory.mktemp("cross_tokenizer_teachers")
    tok = build_tiny_tokenizer(base / "student", vocab_size=320)
    make_tiny_llama(len(tok), num_layers=2, seed=1).save_pretrained(base / "student")
    tok.save_pretrained(base / "plain")
    plain = make_tiny_llama(len(tok), hidden=48, seed=3)
    plain.lm_head.weight.data.mul_(30)
    plain.save_pretrained(base / "plain")
    t_tok = build_sentencepiece_tokenizer(base / "cross", lowercase=False)
    make_tiny_llama(len(t_tok), num_layers=3, hidden=48, heads=4, kv_heads=2, seed=2).save_pretrained(
        base / "cross"
    )
    return base / "student", base / "plain", base / "cross"
