"""Reading and validating records from real files on disk."""

from __future__ import annotations

import json

import pytest

from lmdistill.data import detect_format, load_records, read_jsonl, validate_records
from lmdistill.errors import UserError


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_skips_blank_lines(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", ['{"text": "a"}', "", "   ", '{"text": "b"}'])
    assert read_jsonl(p) == [{"text": "a"}, {"text": "b"}]


def test_read_jsonl_missing_file_names_path(tmp_path):
    p = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match=r"nope\.jsonl"):
        read_jsonl(p)
    with pytest.raises(UserError, match="not found"):
        load_records(p)


def test_invalid_json_names_file_and_line(tmp_path):
    p = write_lines(tmp_path / "data.jsonl", ['{"text": "a"}', '{"text": "b"}', '{"text": oops}'])
    with pytest.raises(UserError, match=r"data\.jsonl:3: invalid JSON"):
        read_jsonl(p)


def test_line_number_counts_blank_lines(tmp_path):
    p = write_lines(tmp_path / "data.jsonl", ['{"text": "a"}', "", "", "{bad"])
    with pytest.raises(UserError, match=r"data\.jsonl:4: invalid JSON"):
        read_jsonl(p)


def test_non_object_line(tmp_path):
    p = write_lines(tmp_path / "data.jsonl", ['{"text": "a"}', "[1, 2]"])
    with pytest.raises(UserError, match=r"data\.jsonl:2: expected a JSON object.*list"):
        read_jsonl(p)


def test_detect_format():
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"prompt": "p", "completion": "c"}) == "prompt_completion"
    assert detect_format({"text": "t"}) == "text"
    with pytest.raises(UserError, match="accepted layouts"):
        detect_format({"prompt": "only"})


def test_unknown_layout_names_file_line_and_layouts(tmp_path):
    p = write_lines(tmp_path / "data.jsonl", ['{"text": "a"}', '{"question": "q", "answer": "a"}'])
    with pytest.raises(UserError, match=r"data\.jsonl:2: .*answer, question.*accepted layouts") as e:
        load_records(p)
    assert '"prompt"' in str(e.value) and '"messages"' in str(e.value)


@pytest.mark.parametrize(
    ("record", "pattern"),
    [
        ({"prompt": "p", "completion": 3}, '"completion" must be a string'),
        ({"text": 5}, '"text" must be a string, got int'),
        ({"prompt": "p", "completion": None}, "non-null keys: prompt"),
        ({"messages": "hi"}, "non-empty list"),
        ({"messages": [{"role": "user"}]}, r'messages\[0\]\["content"\] must be a string'),
        ({"messages": [{"content": "x"}]}, r'messages\[0\] must be an object with a string "role"'),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ],
)
def test_field_validation_names_line(tmp_path, record, pattern):
    p = write_lines(tmp_path / "data.jsonl", ['{"text": "ok"}', "", json.dumps(record)])
    with pytest.raises(UserError, match=r"data\.jsonl:3: .*" + pattern):
        load_records(p)


def test_null_columns_count_as_missing():
    assert detect_format({"messages": None, "prompt": None, "completion": None, "text": "t"}) == "text"


def test_validate_records_uses_index_plus_one():
    with pytest.raises(UserError, match="src:2: "):
        validate_records([{"text": "a"}, {"nope": 1}], "src")


def test_load_records_jsonl_and_json_suffix(tmp_path):
    rows = [{"prompt": "p", "completion": "c"}, {"messages": [{"role": "assistant", "content": "x"}]}]
    for name in ("d.jsonl", "d.json"):
        p = write_lines(tmp_path / name, [json.dumps(r) for r in rows])
        assert load_records(p) == rows


def test_load_records_from_save_to_disk(tmp_path):
    import datasets

    rows = [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert load_records(tmp_path / "ds") == rows

    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "dd"))
    assert load_records(str(tmp_path / "dd")) == rows[:1]
    with pytest.raises(UserError, match="no split 'test'"):
        load_records(tmp_path / "dd", split="test")


def test_plain_folder_is_rejected(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="save_to_disk"):
        load_records(tmp_path / "folder")


def test_hub_failure_becomes_user_error(monkeypatch):
    import datasets

    def fail(name, split):
        raise FileNotFoundError(f"Couldn't find a dataset script or data files for {name}\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(UserError, match=r"could not be found locally.*or loaded") as e:
        load_records("someone/no-such-dataset")
    assert "no-such-dataset" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_hub_records_are_validated(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list([{"x": 1}]))
    with pytest.raises(UserError, match="org/name:1: "):
        load_records("org/name")
