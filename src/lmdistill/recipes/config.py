"""`lmdistill recipe` configuration: black-box distillation end to end, one dataclass per concern.

A recipe YAML names the method (icl, cot, instruct), the tasks, the teacher backend and sampling
(the same sections as `lmdistill generate`), the student and its training (the same sections as
`lmdistill train`), and how to evaluate. Each field is documented once, here, with its default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lmdistill import yamlconfig
from lmdistill.config import DistillConfig, HintConfig, OnPolicyConfig, StudentConfig, TrainConfig
from lmdistill.errors import UserError
from lmdistill.generate.config import SamplingConfig, TeacherBackendConfig
from lmdistill.yamlconfig import setting

METHODS = ("icl", "cot", "instruct")


@dataclass
class TasksConfig:
    names: list[str] = setting(
        ["arithmetic:1", "sentiment"],
        "Tasks: built-in names (arithmetic:1..4, sentiment, format_one_word, format_json) or JSONL files "
        "with question, answer and optional rationale.",
    )
    train_per_task: int = setting(48, "Training questions drawn per task.")
    heldout_per_task: int = setting(24, "Held-out questions per task, used only for evaluation.")
    train_counts: dict = setting(
        {},
        "Training questions of the tasks named here, overriding train_per_task for them (a finite task's "
        "split may hold fewer), e.g. {sentiment: 1000, format_json: 145}.",
    )
    heldout_counts: dict = setting(
        {}, "Held-out questions of the tasks named here, overriding heldout_per_task."
    )
    seed: int = setting(0, "Seed for drawing questions and demonstrations.")


@dataclass
class ICLRecipeConfig:
    k: list[int] = setting(
        [0, 2, 4],
        "In-context tuning: each training question is laid out once per k in this list (k teacher-labelled "
        "demonstrations, then the query).",
    )
    demo_pool: int = setting(
        12, "Training questions per task set aside and labelled by the teacher (0-shot) as demonstrations."
    )
    selection: str = setting(
        "random", "How demonstrations are chosen: random, or nearest (lexical similarity)."
    )
    template: str = setting(
        "Q: {question}\nA: {answer}",
        "One demonstration; the query is rendered with an empty answer.",
    )
    eval_k: int = setting(4, "k of the k-shot evaluation (demonstrations with gold answers, same selection).")
    keep: str = setting(
        "answered",
        "Teacher answers trained on: answered (the task's checker can read an answer), gold (it matches "
        "the gold answer), all.",
    )


@dataclass
class CoTRecipeConfig:
    variant: str = setting(
        "rationale",
        "rationale: train on 'Reasoning: ... Answer: ...'; step_by_step: two tasks with prefixes, "
        "loss = alpha * label + (1 - alpha) * rationale (Hsieh et al. 2023).",
    )
    alpha: float = setting(0.5, "step_by_step: weight of the label task (the rationale task gets 1 - alpha).")
    samples: int = setting(4, "Rationales sampled per question (needs sampling.temperature > 0 when > 1).")
    keep: str = setting(
        "gold", "Rationales kept: gold (answer matches gold), majority (self-consistency vote), all."
    )
    label_prefix: str = setting(
        "[label] ", "step_by_step: prefix of the label task's prompt (also used at test time)."
    )
    rationale_prefix: str = setting("[rationale] ", "step_by_step: prefix of the rationale task's prompt.")
    compare_label_only: bool = setting(
        True,
        "Also train a student on the kept teacher answers alone (no rationale), same questions and steps, "
        "and report both.",
    )


@dataclass
class InstructRecipeConfig:
    instructions: str | None = setting(
        None,
        "Extra instructions (JSONL with prompt or instruction[/input], e.g. `lmdistill generate` self_instruct "
        "output) answered by the teacher and added to the training data.",
    )
    keep: str = setting(
        "format",
        "Teacher answers trained on: format (passes the task's format check; extra instructions: non-empty), "
        "all (every non-empty answer).",
    )


@dataclass
class RecipeEvalConfig:
    max_new_tokens: int = setting(48, "Tokens generated per held-out question.")
    cot_max_new_tokens: int = setting(128, "Tokens per answer where a rationale comes first.")
    batch_size: int = setting(16, "Prompts per generate call.")


@dataclass
class RecipeConfig:
    method: str = setting("icl", "icl, cot or instruct.")
    output_dir: str = setting("runs/recipe", "Data, cache, trained students, report.md and results.json.")
    tasks: TasksConfig = field(default_factory=TasksConfig)
    teacher: TeacherBackendConfig = field(default_factory=TeacherBackendConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    icl: ICLRecipeConfig = field(default_factory=ICLRecipeConfig)
    cot: CoTRecipeConfig = field(default_factory=CoTRecipeConfig)
    instruct: InstructRecipeConfig = field(default_factory=InstructRecipeConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(kd_ratio=0.0))
    hints: HintConfig = field(default_factory=HintConfig)
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: RecipeEvalConfig = field(default_factory=RecipeEvalConfig)

    def validate(self) -> RecipeConfig:
        if self.method not in METHODS:
            raise UserError(f"method: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not self.tasks.names:
            raise UserError("tasks.names: give at least one task")
        if self.tasks.train_per_task < 1 or self.tasks.heldout_per_task < 1:
            raise UserError("tasks.train_per_task and tasks.heldout_per_task must be at least 1")
        for key in ("train_counts", "heldout_counts"):
            for name, n in getattr(self.tasks, key).items():
                if name not in self.tasks.names:
                    raise UserError(f"tasks.{key}: {name!r} is not one of tasks.names {self.tasks.names}")
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise UserError(f"tasks.{key}.{name} must be an integer >= 1, got {n!r}")
        if self.icl.selection not in ("random", "nearest"):
            raise UserError(f"icl.selection: choose random or nearest, got {self.icl.selection!r}")
        if not self.icl.k or any(k < 0 for k in self.icl.k) or self.icl.eval_k < 0:
            raise UserError("icl.k must list demonstration counts >= 0, and icl.eval_k must be >= 0")
        fewest = min(self.tasks.train_counts.get(n, self.tasks.train_per_task) for n in self.tasks.names)
        if self.method == "icl" and self.icl.demo_pool >= fewest:
            raise UserError(
                f"icl.demo_pool ({self.icl.demo_pool}) must be smaller than every task's training questions "
                f"(tasks.train_per_task / tasks.train_counts; fewest {fewest}): the rest are the training queries"
            )
        if "{question}" not in self.icl.template or "{answer}" not in self.icl.template:
            raise UserError("icl.template must contain {question} and {answer}")
        if self.icl.keep not in ("answered", "gold", "all"):
            raise UserError(f"icl.keep: choose answered, gold or all, got {self.icl.keep!r}")
        if self.cot.variant not in ("rationale", "step_by_step"):
            raise UserError(f"cot.variant: choose rationale or step_by_step, got {self.cot.variant!r}")
        if not 0.0 <= self.cot.alpha <= 1.0:
            raise UserError(f"cot.alpha must be in [0, 1], got {self.cot.alpha}")
        if self.cot.keep not in ("gold", "majority", "all"):
            raise UserError(f"cot.keep: choose gold, majority or all, got {self.cot.keep!r}")
        if self.cot.samples < 1:
            raise UserError("cot.samples must be at least 1")
        if self.method == "cot" and self.cot.samples > 1 and self.sampling.temperature == 0:
            raise UserError(
                f"cot.samples={self.cot.samples} with greedy decoding gives the same rationale every time; "
                "set sampling.temperature > 0 (e.g. 0.7) or cot.samples=1"
            )
        if self.instruct.keep not in ("format", "all"):
            raise UserError(f"instruct.keep: choose format or all, got {self.instruct.keep!r}")
        if self.teacher.backend not in ("local", "api"):
            raise UserError(f"teacher.backend: choose local or api, got {self.teacher.backend!r}")
        if self.teacher.backend == "api":
            if not self.teacher.base_url:
                raise UserError("teacher.base_url: the api backend needs the endpoint URL")
            from lmdistill.teachers.api import check_base_url

            check_base_url(self.teacher.base_url)  # no credentials in the URL (before the config is saved)
            if self.distill.kd_ratio > 0:
                raise UserError(
                    "distill.kd_ratio > 0 needs the teacher's logits: use teacher.backend: local, or kd_ratio: 0"
                )
            if not self.student.name:
                raise UserError(
                    "an api teacher cannot be shrunk into a student: give student.name (a local model)"
                )
        if self.eval.max_new_tokens < 1 or self.eval.batch_size < 1:
            raise UserError("eval.max_new_tokens and eval.batch_size must be at least 1")
        return self


def load_recipe_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RecipeConfig:
    """Read a recipe YAML (or defaults when `path` is None), apply overrides, validate."""
    cfg = yamlconfig.load(RecipeConfig, path, overrides).validate()
    # The training sections are checked by the training config's own rules.
    from lmdistill.recipes.common import run_config

    run_config(cfg, "validate.jsonl").validate()
    return cfg
