"""Config: every shipped YAML loads and validates; overrides; one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmdistill.config import (
    RunConfig,
    describe_fields,
    load_config,
    save_config,
)
from lmdistill.errors import UserError
from lmdistill.yamlconfig import parse_overrides

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert CONFIGS, "configs/ ships at least one recipe"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.data.train, f"{path.name} names its training data"


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(
        None, ["distill.kd_ratio=0.3", "student.layers=[0, 5, 9]", "train.extra={use_cpu: true}"]
    )
    assert cfg.distill.kd_ratio == 0.3
    assert cfg.student.layers == [0, 5, 9]
    assert cfg.train.extra == {"use_cpu": True}
    assert cfg.teacher.name == "smollm2-135m"
    assert RunConfig().train.extra is not RunConfig().train.extra  # no shared mutable default


def test_yaml_then_overrides_and_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  loss: jsd\n  beta: 0.2\n  temperature: 2\ntrain:\n  max_steps: 7\n")
    cfg = load_config(path, ["train.max_steps=9"])
    assert (
        cfg.distill.loss == "jsd"
        and cfg.distill.temperature == 2.0
        and isinstance(cfg.distill.temperature, float)
    )
    assert cfg.train.max_steps == 9
    save_config(cfg, tmp_path / "out" / "resolved.yaml")
    again = load_config(tmp_path / "out" / "resolved.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["distill.loss=kl"], "unknown loss 'kl'"),
        (["distill.kd_ratio=1.5"], r"kd_ratio must be in \[0, 1\]"),
        (["distill.temperature=0"], "temperature must be a finite number > 0"),
        (["distill.temperature=.inf"], "temperature must be a finite number > 0"),
        (["data.max_examples=0"], "max_examples must be at least 1"),
        (["distill.loss=jsd", "distill.beta=1.0"], "forward_kl or reverse_kl"),
        (["distill.kd_ratio=abc"], "distill.kd_ratio: expected float"),
        (["train.max_steps=2.5"], "train.max_steps: expected int"),
        (["distill.nope=1"], "unknown key distill.nope"),
        (["nosection.x=1"], "unknown section 'nosection'"),
        (["kd_ratio=0.5"], "unknown section 'kd_ratio'"),
        (["a.b.c=1"], "expected section.key=value"),
        (["student.layers=[1, x]"], r"student.layers\[1\]: expected int"),
    ],
)
def test_bad_values_are_one_clear_error(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="must be a mapping of teacher, teachers, routing, student"):
        load_config(bad)


def test_parse_overrides_types():
    assert parse_overrides(["a.b=null", "a.c=3", "d.e=x y"]) == {"a": {"b": None, "c": 3}, "d": {"e": "x y"}}


def test_describe_fields_documents_every_field():
    text = describe_fields()
    cfg = RunConfig()
    for section in ("teacher", "student", "data", "distill", "train"):
        for key in getattr(cfg, section).__dataclass_fields__:
            assert f"  {key}: " in text, f"{section}.{key} missing from describe_fields()"


GENERATE_CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "generate").glob("*.yaml"))


@pytest.mark.parametrize("path", GENERATE_CONFIGS, ids=[p.name for p in GENERATE_CONFIGS])
def test_every_shipped_generate_config_loads(path):
    from lmdistill.generate import load_generate_config

    cfg = load_generate_config(path)
    assert (Path(__file__).parent.parent / cfg.input).is_file(), cfg.input
