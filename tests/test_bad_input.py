"""Bad input through the real CLI entry: one line on stderr, exit 2, no traceback, nothing written, and
(where it matters) no model loaded and no teacher request sent. docs/bad_input.md lists these cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmdistill.cli import main
from lmdistill.recipes.config import load_recipe_config
from lmdistill.yamlconfig import save
from tests.conftest import cli_fails, write_run_config
from tests.teachers.faultserver import FaultServer

NOT_UTF8 = b'{"text": "caf\xe9 au lait"}\n'  # latin-1 bytes
ROW = {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]}
MISSING = "/no/such/model"


@pytest.fixture
def train_yaml(tmp_path, tiny_model_dirs):
    return write_run_config(tmp_path, *tiny_model_dirs, [ROW], max_steps=1, extra={"use_cpu": True})


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "out.txt"
    path.write_text("not a folder")
    return path


# ---- non-UTF-8 bytes ----------------------------------------------------------------------------


def test_non_utf8_data_names_file_and_line(train_yaml, tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps(ROW).encode() + b"\n" + NOT_UTF8)
    cli_fails(["train", train_yaml, f"data.train={bad}"], capsys, "latin1.jsonl:2", "UTF-8")
    assert not (tmp_path / "out").exists()


def test_non_utf8_yaml_config_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "run.yaml"
    bad.write_bytes(b"teacher:\n  name: tiny\n# caf\xe9\n")
    cli_fails(["train", bad], capsys, "run.yaml:3", "UTF-8")
    cli_fails(["config", bad], capsys, "run.yaml:3")


def test_non_utf8_task_and_text_files_for_eval(tiny_model_dirs, tmp_path, capsys):
    _, student = tiny_model_dirs
    task = tmp_path / "task.jsonl"
    task.write_bytes(b'{"question": "2 + 2?", "answer": "4"}\n{"question": "caf\xe9?", "answer": "x"}\n')
    cli_fails(
        ["eval", student, "--task", task, "--output-dir", tmp_path / "r"], capsys, "task.jsonl:2", "UTF-8"
    )
    text = tmp_path / "held.txt"
    text.write_bytes(b"line one\nline two\nthird caf\xe9\n")
    cli_fails(
        ["eval", student, "--text", text, "--output-dir", tmp_path / "r"], capsys, "held.txt:3", "UTF-8"
    )
    assert not (tmp_path / "r").exists()


def test_non_utf8_user_task_for_recipe(tmp_path, capsys):
    task = tmp_path / "mine.jsonl"
    task.write_bytes(b'{"question": "caf\xe9?", "answer": "x"}\n')
    recipe = Path(__file__).parent.parent / "configs" / "recipes" / "icl.yaml"
    out = tmp_path / "run"
    cli_fails(
        ["recipe", recipe, f"tasks.names=[{task}]", f"output_dir={out}"], capsys, "mine.jsonl:1", "UTF-8"
    )
    assert not out.exists()


def test_non_utf8_generate_input(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(NOT_UTF8)
    with FaultServer() as server:
        args = [
            "generate",
            "/dev/null",
            f"input={src}",
            f"output={tmp_path / 'out.jsonl'}",
            "teacher.backend=api",
            f"teacher.base_url={server.url}",
            "teacher.api_key_env=null",
        ]
        args[1] = _empty_yaml(tmp_path)
        cli_fails(args, capsys, "in.jsonl:1", "UTF-8")
        assert server.total == 0


def _empty_yaml(tmp_path) -> Path:
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path


# ---- output paths that are files, or under files ----------------------------------------------------


def test_train_output_dir_that_is_a_file(train_yaml, a_file, capsys):
    cli_fails(["train", train_yaml, f"train.output_dir={a_file}"], capsys, "is a file")
    cli_fails(["train", train_yaml, f"train.output_dir={a_file / 'sub'}"], capsys, "which is a file")
    assert a_file.read_text() == "not a folder"


def test_generate_output_checked_before_any_request(tmp_path, a_file, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "hello"}) + "\n")
    with FaultServer() as server:
        base = [
            "generate",
            _empty_yaml(tmp_path),
            f"input={src}",
            "teacher.backend=api",
            f"teacher.base_url={server.url}",
            "teacher.api_key_env=null",
        ]
        cli_fails([*base, f"output={a_file / 'x.jsonl'}"], capsys, "which is a file")
        cli_fails([*base, f"output={tmp_path}"], capsys, "is a folder")
        assert server.total == 0


def test_generate_refuses_another_jobs_output_but_resumes_its_own(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    with FaultServer() as server:
        base = [
            "generate",
            str(_empty_yaml(tmp_path)),
            f"input={src}",
            f"output={out}",
            "teacher.backend=api",
            "teacher.name=fake",
            f"teacher.base_url={server.url}",
            "teacher.api_key_env=null",
        ]
        assert main(base) == 0
        first = out.read_text()
        assert main([*base, "teacher.concurrency=2"]) == 0  # the same job again: all from cache
        assert server.total == 3
        sent = server.total
        cli_fails([*base, "sampling.max_new_tokens=8"], capsys, "sampling.max_new_tokens", "overwrite=true")
        assert out.read_text() == first and server.total == sent
        assert main([*base, "sampling.max_new_tokens=8", "overwrite=true"]) == 0
        # an output written by something else (no record of the job) is not replaced either
        other = tmp_path / "theirs.jsonl"
        other.write_text('{"text": "mine"}\n')
        cli_fails([*base, f"output={other}"], capsys, "theirs.jsonl")
        assert other.read_text() == '{"text": "mine"}\n'


def test_capture_output_dir_under_a_file(tiny_model_dirs, tmp_path, a_file, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"name": MISSING}, "data": {"train": str(data)}}))
    # checked before the teacher (missing here) is looked at
    cli_fails(["capture", cfg, f"capture.output_dir={a_file / 'store'}"], capsys, "which is a file")
    cli_fails(["capture", cfg, f"capture.output_dir={a_file}"], capsys, "is a file")


def test_eval_output_dir_checked_before_any_model_loads(tiny_model_dirs, tmp_path, a_file, capsys):
    text = tmp_path / "held.txt"
    text.write_text("Hello world. " * 20)
    cli_fails(["eval", MISSING, "--text", text, "--output-dir", a_file], capsys, "is a file")
    cli_fails(["eval", MISSING, "--text", text, "--output-dir", a_file / "r"], capsys, "which is a file")
    recipe_out = tmp_path / "recipe"
    recipe_out.mkdir()
    (recipe_out / "recipe_config.yaml").write_text("method: icl\n")
    (recipe_out / "report.md").write_text("the recipe's report")
    cli_fails(["eval", MISSING, "--text", text, "--output-dir", recipe_out], capsys, "lmdistill recipe")
    assert (recipe_out / "report.md").read_text() == "the recipe's report"


def test_recipe_output_dir_checks(tmp_path, tiny_model_dirs, a_file, capsys):
    recipe = Path(__file__).parent.parent / "configs" / "recipes" / "icl.yaml"
    cli_fails(["recipe", recipe, f"output_dir={a_file}"], capsys, "is a file")
    train_out = tmp_path / "train_out"
    train_out.mkdir()
    (train_out / "lmdistill_config.yaml").write_text("teacher: {}\n")
    cli_fails(["recipe", recipe, f"output_dir={train_out}"], capsys, "lmdistill train")
    other = tmp_path / "other"
    save(
        load_recipe_config(recipe, [f"output_dir={other}", "tasks.seed=7"]), _mk(other) / "recipe_config.yaml"
    )
    (other / "report.md").write_text("the other recipe's report")
    cli_fails(["recipe", recipe, f"output_dir={other}"], capsys, "tasks.seed", "overwrite_output_dir")


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_export_output_that_is_a_file(tiny_model_dirs, a_file, capsys):
    _, student = tiny_model_dirs
    cli_fails(["export", student, a_file], capsys, "is a file")
    cli_fails(["export", student, a_file / "sub"], capsys, "which is a file")


# ---- serve, floats, zero steps, empty data ---------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_port_out_of_range(port, capsys):
    cli_fails(["serve", "--port", port], capsys, "--port must be between 0 and 65535")


def test_float_notation_is_a_float(train_yaml, tmp_path, capsys):
    assert main(["config", str(train_yaml), "train.learning_rate=2e-5", "distill.temperature=2"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["learning_rate"] == 2e-5 and resolved["distill"]["temperature"] == 2.0
    cfg = yaml.safe_load(train_yaml.read_text())
    text = yaml.safe_dump(cfg) + "distill:\n  kd_ratio: 5E-1\n"
    in_file = tmp_path / "floats.yaml"
    in_file.write_text(text.replace("max_steps: 1", "max_steps: 1\n  learning_rate: 1.5e-4"))
    assert main(["config", str(in_file)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["learning_rate"] == 1.5e-4 and resolved["distill"]["kd_ratio"] == 0.5
    cli_fails(["config", train_yaml, "train.learning_rate=fast"], capsys, "train.learning_rate", "float")
    cli_fails(["config", train_yaml, "train.max_steps=2e3"], capsys, "train.max_steps")  # not an int


def test_zero_steps_and_zero_epochs_is_refused(train_yaml, tmp_path, capsys):
    cli_fails(
        ["train", train_yaml, "train.max_steps=0", "train.num_train_epochs=0"], capsys, "num_train_epochs"
    )
    assert not (tmp_path / "out").exists()


def test_empty_data_is_reported_before_any_model_loads(train_yaml, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cli_fails(
        ["train", train_yaml, f"data.train={empty}", f"teacher.name={MISSING}"],
        capsys,
        "empty.jsonl",
        "empty",
    )
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "The cat sat on the mat " * 10, "completion": "x"}) + "\n")
    err = cli_fails(
        ["train", train_yaml, f"data.train={long}", "data.max_length=8", f"teacher.name={MISSING}"],
        capsys,
        "no examples left",
    )
    assert "long.jsonl" in err
    assert not (tmp_path / "out").exists()


# ---- generate never replaces another command's files (issue 27) -----------------------------------


def _main(*argv) -> int:
    return main([str(a) for a in argv])


def _generate_args(tmp_path, server, out) -> list:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(2)))
    return [
        "generate",
        _empty_yaml(tmp_path),
        f"input={src}",
        f"output={out}",
        "teacher.backend=api",
        "teacher.name=fake",
        f"teacher.base_url={server.url}",
        "teacher.api_key_env=null",
    ]


def test_generate_overwrite_never_replaces_another_commands_files(train_yaml, tmp_path, capsys):
    """overwrite=true replaces only a generate output (with its `<output>.config.yaml`): a trained
    student's weights, a run's marker, a file in an export or any file generate did not write are
    refused whatever the flag, and the refusal does not suggest overwrite=true for them."""
    run = tmp_path / "out"
    assert _main("train", train_yaml) == 0
    export = tmp_path / "exported"
    assert _main("export", run, export) == 0
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text('{"text": "mine"}\n')
    protected = {
        run / "student" / "model.safetensors": "lmdistill train",
        run / "lmdistill_config.yaml": "lmdistill train",
        run / "new.jsonl": "lmdistill train",  # a new file inside a train run folder
        export / "config.json": "lmdistill export",
        export / "data.jsonl": "lmdistill export",
        theirs: "not written by `lmdistill generate`",
    }
    before = {p: p.read_bytes() for p in protected if p.exists()}
    capsys.readouterr()
    with FaultServer() as server:
        for path, owner in protected.items():
            for flag in ([], ["overwrite=true"]):
                err = cli_fails([*_generate_args(tmp_path, server, path), *flag], capsys, str(path), owner)
                assert "overwrite=true" not in err, err
        assert server.total == 0
        # generate's own output is still replaced when asked
        mine = tmp_path / "mine.jsonl"
        assert _main(*_generate_args(tmp_path, server, mine)) == 0
        err = cli_fails([*_generate_args(tmp_path, server, mine), "sampling.max_new_tokens=8"], capsys)
        assert "overwrite=true" in err
        assert (
            _main(*_generate_args(tmp_path, server, mine), "sampling.max_new_tokens=8", "overwrite=true") == 0
        )
    assert {p: p.read_bytes() for p in protected if p.exists()} == before
    assert not (run / "new.jsonl").exists() and not (export / "data.jsonl").exists()
    assert not list(run.glob("*.config.yaml")) and not list(export.glob("*.config.yaml"))
