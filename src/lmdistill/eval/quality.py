"""Distillation quality, measured: one student per method trained on the same tokens, scored against
the teacher on held-out text while it trains and at the end. `lmdistill demo` and
`benchmarks/bench_quality.py` both run on this.

Two things make many runs affordable on a CPU:
- `PrecomputedTeacher`: the teacher's final hidden states at the scored positions of every training
  example are computed once ([n_i, H] per example, a few MB), and every run and seed reads them; the
  KD term is then computed from them through the teacher's head, exactly as `InProcessTeacher` does,
  with no teacher forward per step (hint terms still need the live teacher, and so do on-policy
  steps: the student's own samples are new text, scored by the live teacher);
- `HeldoutScorer`: the same for the held-out set, so scoring a student costs one student forward.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from lmdistill.chunked import Head
from lmdistill.config import DataConfig, DistillConfig, HintConfig, OnPolicyConfig, RunConfig, TrainConfig
from lmdistill.data import IGNORE_INDEX, DistillCollator
from lmdistill.eval.scoring import ScoreSums, TokenScores
from lmdistill.models.forward import final_hidden
from lmdistill.teachers.whitebox.local import InProcessTeacher
from lmdistill.teachers.whitebox.source import TeacherQuery, TeacherScores


@dataclass(frozen=True)
class Method:
    """One way to train the student. kd_ratio 0: CE alone on the data's tokens (plain fine-tuning;
    sequence-level KD when the tokens are the teacher's). `hints`: `HintConfig` fields (the live
    teacher runs each step). `on_policy`: `OnPolicyConfig` fields (e.g. {"lmbda": 0.5}): that share
    of the optimizer steps trains on the student's own samples of the training rows' prompts
    (`lmdistill.training.on_policy.OnPolicyTrainer`), the other steps on the data's answers as
    without it. A new method is one more entry in a table of these."""

    name: str
    loss: str = "forward_kl"
    kd_ratio: float = 0.0
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    hints: dict = field(default_factory=dict)
    on_policy: dict = field(default_factory=dict)

    def run_config(
        self,
        *,
        output_dir: str,
        steps: int,
        batch_size: int,
        lr: float,
        seed: int,
        eval_every: int | None = None,
    ) -> RunConfig:
        """eval_every: the held-out loss is computed every N optimizer steps (what on_policy's adaptive
        schedule reads; the features come with `train_student`); None: no evaluation."""
        return RunConfig(
            # in memory: `train_student` hands the trainer the features, no file is read
            data=DataConfig(eval="held-out features (in memory)" if eval_every else None),
            distill=DistillConfig(
                loss=self.loss,
                kd_ratio=self.kd_ratio,
                temperature=self.temperature,
                beta=self.beta,
                alpha=self.alpha,
            ),
            hints=HintConfig(**self.hints),
            on_policy=OnPolicyConfig(**self.on_policy),
            train=TrainConfig(
                output_dir=output_dir,
                max_steps=steps,
                per_device_train_batch_size=batch_size,
                learning_rate=lr,
                lr_scheduler_type="cosine",
                warmup_steps=max(1, steps // 10),
                logging_steps=max(1, steps // 4),
                save_steps=eval_every or 10**9,  # the trainer evaluates every save_steps
                seed=seed,
                extra={"use_cpu": not torch.cuda.is_available(), "save_strategy": "no", "disable_tqdm": True},
            ),
        ).validate()


def _scored_rows(model, features: list[dict], pad: int, batch_size: int) -> list[torch.Tensor]:
    """Per feature, the model's final hidden states [n_i, H] at the positions that predict a target
    token (labels[1:] != -100), in order."""
    collate = DistillCollator(pad_token_id=pad)
    rows: list[torch.Tensor] = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(features), batch_size):
                batch = collate(features[i : i + batch_size])
                device = next(model.parameters()).device
                ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                hidden = final_hidden(model, ids, attn)[:, :-1].cpu()  # kept on the CPU
                mask = batch["labels"][:, 1:] != IGNORE_INDEX
                rows.extend(hidden[b][mask[b]].clone() for b in range(hidden.shape[0]))
    finally:
        model.train(was)
    return rows


class PrecomputedTeacher:
    """A teacher source over fixed training examples: the teacher's final hidden states at each
    example's scored positions, computed once. Features must carry "example_index" (their index in
    `features`); the trainer's queries are answered by looking them up.

    Exact for right-padded causal models (a token's state does not depend on the padding after it),
    up to float summation order. Any other text (a batch without example_index: the student's own
    samples on on-policy steps) is refused, or, from `with_live_teacher()`, scored by the live teacher.
    """

    def __init__(self, teacher: torch.nn.Module, features: list[dict], pad: int, *, batch_size: int = 8):
        self.model = teacher  # kept for the head (and `.name`); never run again by this source
        self.name = "precomputed teacher"
        self.rows = _scored_rows(teacher, features, pad, batch_size)
        self.head = Head.of(teacher, trainable=False)
        self.device = torch.device("cpu")
        self.live: InProcessTeacher | None = None

    def with_live_teacher(self) -> PrecomputedTeacher:
        """The same states (shared, not copied), and batches without example_index scored by the live
        teacher, as `InProcessTeacher` scores every batch: on-policy steps train on text sampled
        during training, which no precomputation covers."""
        view = copy.copy(self)
        view.live = InProcessTeacher(self.model, self.name)
        return view

    def to(self, device) -> PrecomputedTeacher:
        """The kept states move per batch; the head is the model's, so the model moves."""
        self.device = torch.device(device)
        if next(self.model.parameters()).device != self.device:
            self.model.to(self.device)
            self.head = Head.of(self.model, trainable=False)
        return self

    def score(self, query: TeacherQuery) -> TeacherScores:
        if query.example_index is None:
            if self.live is not None:  # new text (on-policy samples): the teacher runs on it
                return self.live.score(query)
            raise ValueError(
                "PrecomputedTeacher answers training examples only (no example_index in the batch)"
            )
        counts = query.counts
        parts = []
        for b, i in enumerate(query.example_index.tolist()):
            row = self.rows[int(i)]
            if row.shape[0] != counts[b]:
                raise ValueError(f"example {i}: {counts[b]} scored positions, {row.shape[0]} precomputed")
            parts.append(row)
        return TeacherScores(hidden=torch.cat(parts).to(self.device), head=self.head)


def indexed(features: list[dict]) -> list[dict]:
    """Copies of `features` carrying their index (what `PrecomputedTeacher` looks them up by)."""
    return [{**f, "example_index": i} for i, f in enumerate(features)]


class HeldoutScorer:
    """Top-1 agreement, KL(teacher ‖ model) and perplexity on fixed held-out features, the teacher's
    side computed once (`lmdistill.eval.scoring.ScoreSums`, the same sums as `score_tokens`)."""

    def __init__(
        self, teacher: torch.nn.Module, features: list[dict], vocab: int, pad: int, *, batch_size: int = 8
    ):
        self.features, self.vocab, self.pad, self.batch_size = features, vocab, pad, batch_size
        self.t_rows = _scored_rows(teacher, features, pad, batch_size)
        self.t_head = Head.of(teacher, trainable=False)
        self.targets = [torch.tensor([x for x in f["labels"][1:] if x != IGNORE_INDEX]) for f in features]

    def score(self, model: torch.nn.Module) -> TokenScores:
        rows = _scored_rows(model, self.features, self.pad, self.batch_size)
        return self._scores(Head.of(model, trainable=False), rows)

    def teacher_scores(self) -> TokenScores:
        """The teacher's own figures (top-1 1, KL 0, its perplexity) from the states kept: no forward."""
        return self._scores(self.t_head, self.t_rows)

    def _scores(self, head: Head, rows: list[torch.Tensor]) -> TokenScores:
        sums = ScoreSums()
        device = head.weight.device if head.weight is not None else next(head.module.parameters()).device
        t_device = self.t_head.weight.device if self.t_head.weight is not None else device
        with torch.no_grad():
            sums.add(
                head,
                torch.cat(rows).to(device),
                torch.cat(self.targets).to(device),
                self.vocab,
                t_head=self.t_head,
                t_hidden=torch.cat(self.t_rows).to(t_device),
            )
        return sums.scores(with_teacher=True)


class CurveCallback(TrainerCallback):
    """Scores the student every `every` optimizer steps (and at step 0) into `points`:
    [{"step", "top1", "kl", "perplexity"}, ...]."""

    def __init__(self, scorer: HeldoutScorer, every: int):
        self.scorer, self.every = scorer, every
        self.points: list[dict] = []

    def _add(self, step: int, model) -> None:
        s = self.scorer.score(model)
        self.points.append({"step": step, "top1": s.top1, "kl": s.kl, "perplexity": s.perplexity})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._add(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._add(state.global_step, model)


def train_student(
    method: Method,
    student0: torch.nn.Module,
    teacher: torch.nn.Module,
    tokenizer,
    vocab: int,
    train_features: list[dict],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    output_dir: str,
    precomputed: PrecomputedTeacher | None = None,
    curve: CurveCallback | None = None,
    eval_features: list[dict] | None = None,
    eval_every: int | None = None,
) -> tuple[torch.nn.Module, float]:
    """Train a copy of `student0` as `method` says; returns (student, training seconds).

    `train_features` must be `indexed` when `precomputed` is given; hint methods use the live teacher.
    On-policy methods need features carrying "prompt_ids" (`lmdistill.training.sampling.prompt_features`):
    the student samples answers to those prompts; their off-policy steps read `precomputed`, their
    on-policy steps the live teacher (`PrecomputedTeacher.with_live_teacher`).
    """
    from transformers import set_seed

    from lmdistill.training.run import Models, make_trainer

    if (eval_features is None) != (eval_every is None):
        raise ValueError("eval_features and eval_every come together")
    cfg = method.run_config(
        output_dir=output_dir, steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every
    )
    set_seed(seed)
    student = copy.deepcopy(student0).train().requires_grad_(True)
    if method.on_policy and not all("prompt_ids" in f for f in train_features):
        raise ValueError(
            f"{method.name}: on-policy steps sample answers to the training prompts, but the features carry "
            "no prompt_ids (build them with lmdistill.training.sampling.prompt_features)"
        )
    source = None  # None: the live teacher (Models' default)
    if precomputed is not None and not method.hints:
        source = precomputed.with_live_teacher() if method.on_policy else precomputed
    models = Models(teacher, student, tokenizer, vocab, source)
    trainer = make_trainer(cfg, models, train_features, eval_features, log=lambda *a: None)
    if curve is not None:
        trainer.add_callback(curve)
    t0 = time.perf_counter()
    trainer.train()
    return student.eval(), time.perf_counter() - t0


def greedy_answers(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy chat answers (one user turn each), in prompt order."""
    from lmdistill.models.generation import ChatGenerator
    from lmdistill.teachers.types import Request, Sampling

    sampling = Sampling(max_new_tokens=max_new_tokens)
    requests = [Request.chat([{"role": "user", "content": p}], sampling) for p in prompts]
    return [r.text for r in ChatGenerator(model, tokenizer, batch_size=batch_size).generate(requests)]


def answer_metrics(
    model, teacher, tokenizer, prompts: Sequence[str], teacher_answers: Sequence[str], *, max_new_tokens: int
) -> dict:
    """ROUGE-L of the model's greedy answers against the teacher's, and the teacher's mean log-prob
    per token (nats) of the model's own answers."""
    from lmdistill.eval.metrics import generation_agreement
    from lmdistill.eval.own_answers import teacher_logprob_of_answers
    from lmdistill.eval.run import chat_prompts

    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    agreement = generation_agreement(answers, list(teacher_answers))
    own = teacher_logprob_of_answers(teacher, tokenizer, chat_prompts(tokenizer, list(prompts)), answers)
    return {"rouge_l": agreement["rouge_l"], "own_logprob": own.logprob_per_token, "answers": answers}


LogFn = Callable[[str], object]
