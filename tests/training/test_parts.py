"""The run's parts (lmdistill.training.parts): a student shrunk from a model other than the teacher, and
the parts chosen from the config. Real tiny models on disk."""

from __future__ import annotations

import pytest
import torch
import yaml

from lmdistill.config import load_config
from tests.conftest import cli_fails, make_tiny_llama


def _cfg(tmp_path, **sections):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(sections))
    return load_config(path)


def test_a_student_shrunk_from_another_model_copies_that_models_layers(tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmdistill.training.parts.models import build_models, student_base

    teacher_dir, _ = tiny_model_dirs
    base_dir = tmp_path / "base"  # 3 layers, another seed: every weight differs from the teacher's
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    make_tiny_llama(len(tok), num_layers=3, seed=7).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    cfg = _cfg(
        tmp_path,
        teacher={"name": str(teacher_dir)},
        student={"shrink_from": str(base_dir), "layers": [0, 2]},
        data={"train": "unused.jsonl"},
    )
    assert student_base(cfg) == str(base_dir)
    models = build_models(cfg, log=lambda _: None)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = models.student
    assert student.config.num_hidden_layers == 2
    for j, i in enumerate([0, 2]):
        got = student.model.layers[j].mlp.up_proj.weight
        torch.testing.assert_close(got, base.model.layers[i].mlp.up_proj.weight, rtol=0, atol=0)
        assert not torch.equal(got, teacher.model.layers[i].mlp.up_proj.weight)
    torch.testing.assert_close(student.lm_head.weight, base.lm_head.weight, rtol=0, atol=0)
    # the teacher is still the run's teacher, in this process
    assert models.teacher.config.num_hidden_layers == 4
    # its layers are not the teacher's: the `copied` hint mapping must not pair them with teacher layers
    assert not hasattr(student.config, "lmdistill_teacher_layers")


def test_shrink_from_and_a_student_name_together_are_refused(tiny_model_dirs, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "teacher": {"name": str(tiny_model_dirs[0])},
                "student": {"name": str(tiny_model_dirs[1]), "shrink_from": str(tiny_model_dirs[0])},
                "data": {"train": "x.jsonl"},
            }
        )
    )
    cli_fails(["train", path], capsys, "student.name", "student.shrink_from", "both given")


@pytest.mark.parametrize(
    "sections, kinds",
    [
        ({"distill": {"kd_ratio": 0.0}}, ("none", "DataSampler", "Replicated")),
        ({}, ("in_process", "DataSampler", "Replicated")),
        ({"distill": {"teacher_store": "store"}}, ("store", "DataSampler", "Replicated")),
        ({"teacher": {"name": "t", "server": "http://127.0.0.1:9"}}, ("server", "DataSampler", "Replicated")),
        ({"on_policy": {"lmbda": 0.5}}, ("in_process", "OnPolicySampler", "Replicated")),
        ({"train": {"fsdp": True}}, ("in_process", "DataSampler", "Sharded")),
    ],
)
def test_parts_are_chosen_once_from_the_config(tmp_path, sections, kinds):
    from lmdistill.training.parts.launcher import choose_launcher
    from lmdistill.training.parts.sampler import choose_sampler
    from lmdistill.training.parts.teacher import TeacherPart

    raw = {"teacher": {"name": "t"}, "student": {"name": "s"}, "data": {"train": "x.jsonl"}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    cfg = _cfg(tmp_path, **raw)
    got = (
        TeacherPart.choose(cfg).kind,
        type(choose_sampler(cfg)).__name__,
        type(choose_launcher(cfg)).__name__,
    )
    assert got == kinds
