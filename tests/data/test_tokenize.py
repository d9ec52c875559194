"""Completion-only labels, checked by decoding the target tokens with the real tiny tokenizer."""

from __future__ import annotations

import pytest

from lmdistill.data import IGNORE_INDEX, chat_target_spans, tokenize_record, tokenize_records
from lmdistill.errors import UserError

EOS = "<|im_end|>"


def runs(feature, targets=True):
    """Contiguous runs of target (or non-target) token ids."""
    out, cur = [], []
    for tok, lab in zip(feature["input_ids"], feature["labels"], strict=True):
        if (lab != IGNORE_INDEX) == targets:
            cur.append(tok)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def decode_runs(tok, feature, targets=True):
    return [tok.decode(r, skip_special_tokens=False) for r in runs(feature, targets)]


def check_consistent(feature):
    ids, labels = feature["input_ids"], feature["labels"]
    assert len(ids) == len(labels) == len(feature["attention_mask"])
    assert feature["attention_mask"] == [1] * len(ids)
    assert labels[0] == IGNORE_INDEX
    assert all(lab in (IGNORE_INDEX, t) for lab, t in zip(labels, ids, strict=True))


def test_text_all_targets_plus_eos_except_position_0(tiny_tokenizer):
    text = "The cat sat on the mat."
    f = tokenize_record({"text": text}, tiny_tokenizer, max_length=128)
    check_consistent(f)
    ids = f["input_ids"]
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == text + EOS
    assert f["labels"] == [IGNORE_INDEX, *ids[1:]]


def test_prompt_completion_targets_are_completion_plus_eos(tiny_tokenizer):
    prompt, completion = "What is the capital of France?\n", "The capital of France is Paris."
    f = tokenize_record({"prompt": prompt, "completion": completion}, tiny_tokenizer, max_length=128)
    check_consistent(f)
    assert decode_runs(tiny_tokenizer, f) == [completion + EOS]
    assert decode_runs(tiny_tokenizer, f, targets=False) == [prompt]


def test_prompt_completion_token_straddling_boundary_is_a_target(tiny_tokenizer):
    # "Hel" + "lo world": BPE merges across the boundary, the straddling token counts as a target.
    prompt, completion = "Hel", "lo world"
    f = tokenize_record({"prompt": prompt, "completion": completion}, tiny_tokenizer, max_length=128)
    check_consistent(f)
    [target] = decode_runs(tiny_tokenizer, f)
    assert target.endswith(completion + EOS)
    non_target = "".join(decode_runs(tiny_tokenizer, f, targets=False))
    assert non_target + target == prompt + completion + EOS
    assert "Hel".startswith(non_target)


def test_messages_multi_turn_targets_each_assistant_turn(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "How many apples?"},
        {"role": "assistant", "content": "Four apples."},
        {"role": "user", "content": "And the capital of France?"},
        {"role": "assistant", "content": "Paris, thank you."},
    ]
    f = tokenize_record({"messages": messages}, tiny_tokenizer, max_length=256)
    check_consistent(f)
    assert decode_runs(tiny_tokenizer, f) == ["Four apples.<|im_end|>\n", "Paris, thank you.<|im_end|>\n"]
    context = "".join(decode_runs(tiny_tokenizer, f, targets=False))
    for m in messages[:2] + messages[3:4]:
        assert m["content"] in context
    assert "apples." not in context and "Paris" not in context
    full = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert tiny_tokenizer.decode(f["input_ids"], skip_special_tokens=False) == full


def test_messages_with_unicode_content(tiny_tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Héllo, ünïcode ✓"}]
    f = tokenize_record({"messages": messages}, tiny_tokenizer, max_length=256)
    assert decode_runs(tiny_tokenizer, f) == ["Héllo, ünïcode ✓<|im_end|>\n"]


def test_assistant_opening_the_chat_is_not_a_target(tiny_tokenizer):
    messages = [
        {"role": "assistant", "content": "Welcome."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    f = tokenize_record({"messages": messages}, tiny_tokenizer, max_length=256)
    assert decode_runs(tiny_tokenizer, f) == ["Hello.<|im_end|>\n"]


def test_chat_target_spans_cover_content_and_end_of_turn(tiny_tokenizer):
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    text, spans = chat_target_spans(messages, tiny_tokenizer)
    assert [text[a:b] for a, b in spans] == ["A<|im_end|>\n"]


def test_no_chat_template_is_user_error(tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    rec = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    with pytest.raises(UserError, match="chat_template"):
        tokenize_record(rec, tiny_tokenizer, 64)


def test_prefix_unstable_template_is_user_error(tiny_tokenizer):
    tiny_tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    rec = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    with pytest.raises(UserError, match="not prefix-stable"):
        tokenize_record(rec, tiny_tokenizer, 64)


def test_truncation_keeps_start(tiny_tokenizer):
    f = tokenize_record({"text": "The cat sat on the mat and the dog slept."}, tiny_tokenizer, max_length=5)
    full = tokenize_record({"text": "The cat sat on the mat and the dog slept."}, tiny_tokenizer, 512)
    assert f["input_ids"] == full["input_ids"][:5]
    assert f["labels"] == full["labels"][:5]


def test_truncation_dropping_all_targets_returns_none(tiny_tokenizer):
    rec = {"prompt": "The cat sat on the mat and the dog slept by the door. ", "completion": "Yes."}
    assert tokenize_record(rec, tiny_tokenizer, max_length=6) is None
    user = {"role": "user", "content": "Hello world, how are you?"}
    chat = {"messages": [user, {"role": "assistant", "content": "Fine."}]}
    assert tokenize_record(chat, tiny_tokenizer, max_length=8) is None
    # A single-token text: its only token is position 0, which is never a target.
    assert tokenize_record({"text": "a"}, tiny_tokenizer, max_length=1) is None


def test_tokenize_records_stats(tiny_tokenizer):
    records = [
        {"text": "Hello world"},
        {"prompt": "The cat sat on the mat and the dog slept by the door.", "completion": " Yes"},
        {"prompt": "Q\n", "completion": "Paris"},
    ]
    features, stats = tokenize_records(records, tiny_tokenizer, max_length=10, source="x.jsonl")
    assert len(features) == 2
    expected_targets = sum(sum(lab != IGNORE_INDEX for lab in f["labels"]) for f in features)
    assert stats == {"examples": 3, "kept": 2, "dropped_no_target": 1, "target_tokens": expected_targets}
    assert expected_targets > 0


def test_tokenize_records_nothing_left_is_user_error(tiny_tokenizer):
    records = [{"prompt": "The cat sat on the mat and the dog slept.", "completion": "x"}] * 2
    msg = r"no examples left after tokenization/truncation \(2 read from train\.jsonl; max_length=4\)"
    with pytest.raises(UserError, match=msg):
        tokenize_records(records, tiny_tokenizer, max_length=4, source="train.jsonl")


def test_tokenize_records_validates_with_location(tiny_tokenizer):
    with pytest.raises(UserError, match=r"train\.jsonl:2: "):
        tokenize_records([{"text": "a b"}, {"text": 5}], tiny_tokenizer, 16, source="train.jsonl")
