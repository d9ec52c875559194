"""On-policy distillation: the student learns on sequences it samples itself, scored by the teacher.

Sampling lives here, beside the trainer, and produces ordinary batches (input ids, attention mask,
labels with the prompt and everything after the first end-of-sequence masked) that the same trainer
step consumes: off-policy, on-policy and sequence-level KD differ only in where a batch came from.

Per optimizer step (one accumulation window of G micro-batches), `OnPolicyTrainer.get_batch_samples`
decides, with probability lmbda (`on_policy.schedule` moves it), whether the whole window is
- off-policy: the data's answers, as `DistillTrainer` trains without this module;
- on-policy: the student samples completions of the window's prompts, `samples_per_prompt` each,
  through the run's sampler (`lmdistill.training.samplers`): by default in one `generate` call
  (unwrapped, eval mode, KV cache, left padding, no grad), or on a vLLM server whose weights follow
  the student's (on_policy.sampler=vllm);
- seq_kd (when `on_policy.seq_kd`, instead of off-policy): the teacher samples them.
The decision is a function of (train.seed, step) alone, so every process of a DDP run takes the same
one without talking, and a resumed run takes the same ones again. Sampling itself is seeded by
(seed, step, process) inside `torch.random.fork_rng`, so it leaves the trainer's RNG untouched.

Loss on on-policy batches (`on_policy.estimator`):
- divergence: distill.loss over the whole vocabulary (teacher in this process) or top-k + tail (a
  server), KD only (CE on the student's own samples would reinforce them), normalised per target
  token over the step as every batch is;
- sampled: only the teacher's log-prob of each sampled token (`sampled_token_loss`).

Prompts come from the rows (`prompt_features`): a `prompt` (with or without `completion`), or
`messages` up to the last user turn (a row ending in an assistant turn uses everything before it).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint
from transformers import TrainerCallback

from lmdistill.chunked import Head, LossSpec
from lmdistill.config import OnPolicyConfig
from lmdistill.data.tokenize import IGNORE_INDEX
from lmdistill.losses import sampled_token_loss
from lmdistill.models.forward import final_hidden, unwrap
from lmdistill.teachers.whitebox import TeacherQuery, TeacherScores
from lmdistill.training.samplers import CompletionSampler, GenerateSampler, SampleRequest
from lmdistill.training.sampling import eos_ids, sequence_batch
from lmdistill.training.trainer import DistillTrainer

SAMPLES_FILE = "on_policy_samples.jsonl"
ON, OFF, SEQ_KD = "on_policy", "off_policy", "seq_kd"


@torch.no_grad()
def teacher_token_logprobs(
    scores: TeacherScores, tokens: torch.Tensor, vocab: int, chunk_size: int = 256
) -> torch.Tensor:
    """The teacher's log-prob (temperature 1) of each scored position's actual next token: [N] float32.

    Dense: log_softmax through the teacher's head, chunk_size rows at a time. Sparse: what the source
    read beside the top k (`target_logprobs`), else the token's entry in the top k; a token in neither
    is a ValueError (a store or server that cannot give it). Routed (several teachers): each part's
    tokens from its own teacher; a mixture of teachers: the mixture's log-prob.
    """
    if scores.parts is not None:
        got = torch.full(tokens.shape, float("nan"), device=tokens.device)
        for part in scores.parts:
            rows = part.tokens.to(tokens.device)
            if part.scores is None:
                raise ValueError("a teacher held no scores for sampled tokens")
            got[rows] = teacher_token_logprobs(part.scores, tokens[rows], vocab, chunk_size)
        return got
    if scores.hidden is not None:
        out = []
        mixture = getattr(scores.head, "log_probs", None)  # several teachers' mixture: log-probs already
        for c in range(0, tokens.shape[0], chunk_size):
            h = scores.hidden[c : c + chunk_size]
            logp = mixture(h, vocab) if mixture else torch.log_softmax(scores.head.logits(h, vocab), -1)
            out.append(logp.gather(1, tokens[c : c + chunk_size, None].to(logp.device)))
        return torch.cat(out).squeeze(1) if out else torch.zeros(0)
    s = scores.sparse
    hit = s.ids.to(tokens.device) == tokens[:, None]
    from_topk = torch.where(hit, s.logprobs.to(tokens.device), float("nan")).nansum(1)
    from_topk = torch.where(hit.any(1), from_topk, float("nan"))
    own = scores.target_logprobs
    got = (
        from_topk
        if own is None
        else torch.where(torch.isnan(own.to(tokens.device)), from_topk, own.to(tokens.device))
    )
    if torch.isnan(got).any():
        raise ValueError(
            f"the teacher gave no log-prob for {int(torch.isnan(got).sum())} sampled tokens (not in its top-k "
            "and not returned on their own): the sampled estimator needs a server that returns each prompt "
            "token's log-prob (vLLM prompt_logprobs, lmdistill serve)"
        )
    return got.float()


# -- schedule -------------------------------------------------------------------------------------------


class Schedule:
    """lmbda per optimizer step, and the window's kind drawn from it (the same on every process)."""

    def __init__(self, cfg: OnPolicyConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.adaptive = 0.0  # adaptive: the current lmbda, raised by `observe`
        self._last_eval: float | None = None

    def lmbda(self, step: int) -> float:
        c = self.cfg
        if c.schedule == "linear":
            return c.lmbda * min(1.0, step / c.ramp_steps)
        if c.schedule == "adaptive":
            return self.adaptive
        return c.lmbda

    def kind(self, step: int) -> str:
        """ON with probability lmbda(step), else SEQ_KD (seq_kd) or OFF; a function of (seed, step)."""
        draw = random.Random(self.seed * 1_000_003 + step).random()
        if draw < self.lmbda(step):
            return ON
        return SEQ_KD if self.cfg.seq_kd else OFF

    def observe(self, eval_loss: float) -> None:
        """adaptive: raise lmbda by adaptive_step when the held-out loss rose since the last evaluation."""
        if self.cfg.schedule != "adaptive" or not math.isfinite(eval_loss):
            return
        if self._last_eval is not None and eval_loss > self._last_eval:
            self.adaptive = min(self.cfg.lmbda, self.adaptive + self.cfg.adaptive_step)
        self._last_eval = eval_loss

    def state(self) -> dict:
        return {"adaptive": self.adaptive, "last_eval": self._last_eval}

    def load_state(self, state: dict) -> None:
        self.adaptive, self._last_eval = float(state["adaptive"]), state["last_eval"]


class _AdaptiveCallback(TrainerCallback):
    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self.schedule.observe(float(metrics["eval_loss"]))


class _TimedSource:
    """A teacher source whose `score` calls are timed (seconds added to `timer["teacher"]`)."""

    def __init__(self, source, timer: dict):
        self._source, self._timer = source, timer

    def score(self, query: TeacherQuery):
        start = time.perf_counter()
        try:
            return self._source.score(query)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._timer["teacher"] += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self._source, name)


# -- the trainer ----------------------------------------------------------------------------------------


def state_file(process_index: int) -> str:
    """The on-policy state of one process inside a checkpoint-N folder."""
    return f"on_policy_state_{process_index}.pt"


class OnPolicyTrainer(DistillTrainer):
    """`DistillTrainer` whose accumulation windows may be replaced by generated sequences.

    Args (beyond DistillTrainer's):
        on_policy: the `OnPolicyConfig`.
        tokenizer: the run's tokenizer (pad and EOS ids, and decoding the logged samples).
        max_length: tokens per generated row at most (data.max_length).
        teacher_model: the teacher model, for seq_kd (sampled from) and nothing else.
        sampler: who samples the student's completions (`CompletionSampler`); default `GenerateSampler`.

    Logged beside DistillTrainer's (per logging interval): `lmbda`; `on_policy_steps`, `seq_kd_steps`;
    on-policy losses per target token apart from the off-policy ones (`on_policy_kd`, or with the
    sampled estimator `on_policy_reverse_kl`: the mean of log q - log p over sampled tokens) and
    `on_policy_tokens`; wall seconds spent sampling, in the teacher's scoring, and in the student's
    forward and backward (`time_sampling_s`, `time_teacher_s`, `time_student_s`); and what the sampler
    reports (vLLM: `vllm_staleness`, `time_sync_s`, `vllm_logprob_diff`, `time_check_s`; both times within
    `time_sampling_s`).
    """

    def __init__(
        self,
        *args,
        on_policy: OnPolicyConfig,
        tokenizer,
        max_length: int,
        teacher_model=None,
        sampler: CompletionSampler | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.on_policy = on_policy
        self.sampler: CompletionSampler = sampler or GenerateSampler()
        self._sampler_stats: dict[str, float] = {}
        self.schedule = Schedule(on_policy, self.args.seed)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.gen_tokenizer = tokenizer
        self.max_length = max_length
        self.teacher_model = teacher_model
        self.on_spec: LossSpec = replace(self.spec, ce_weight=0.0, kd_weight=self.spec.temperature**2)
        self._timer = {"sampling": 0.0, "teacher": 0.0, "student": 0.0}
        self._counts = {ON: 0, SEQ_KD: 0}
        self._on_sums: dict[str, float] = {}
        self._replay: deque = deque(maxlen=max(on_policy.replay_buffer_size, 1))
        if self.teacher is not None:
            self.teacher = _TimedSource(self.teacher, self._timer)
        if on_policy.schedule == "adaptive":
            self.add_callback(_AdaptiveCallback(self.schedule))

    # -- checkpoints: the adaptive schedule's lmbda and the replay buffer travel with the run

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = self.checkpoint_folder(trial)
        state = {"schedule": self.schedule.state(), "replay": list(self._replay)}
        torch.save(state, folder / state_file(self.args.process_index))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Trainer calls this once, before the first step, when it resumes from the `checkpoint` folder:
        the on-policy state comes back with the optimizer's (each process its own replay buffer; a
        checkpoint written before this state was saved starts it afresh)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        path = Path(checkpoint) / state_file(self.args.process_index) if checkpoint else None
        if path is None or not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.schedule.load_state(state["schedule"])
        self._replay.clear()
        self._replay.extend(state["replay"])

    # -- where the batches come from

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, count = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, count
        step = self.state.global_step
        kind = self.schedule.kind(step)
        if kind == OFF:
            return batches, count
        self._counts[kind] += 1
        start = time.perf_counter()
        if kind == ON and self._replay_now(step, len(batches)):
            new = random.Random(self.args.seed + 7919 * step).sample(list(self._replay), len(batches))
        else:
            new = self._generate(batches, kind, step)
            if kind == ON and self.on_policy.replay_buffer_size:
                self._replay.extend(new)
        self._timer["sampling"] += time.perf_counter() - start
        new = [{**b, "batch_kind": kind} for b in new]
        return new, self._get_num_items_in_batch(new, device)

    def _replay_now(self, step: int, needed: int) -> bool:
        c = self.on_policy
        if not c.replay_buffer_size or len(self._replay) < needed:
            return False
        return random.Random(self.args.seed * 31 + step).random() < c.replay_ratio

    def _generate(self, batches: list[dict], kind: str, step: int) -> list[dict]:
        """One sampler call for the window's prompts (the teacher's `generate` for seq_kd); back into
        micro-batches of the same prompts."""
        c = self.on_policy
        n = c.samples_per_prompt
        sizes = [len(b["prompt_ids"]) * n for b in batches]
        prompts = [p for b in batches for p in b["prompt_ids"] for _ in range(n)]
        model, sampler = (self.model, self.sampler) if kind == ON else (self.teacher_model, GenerateSampler())
        request = SampleRequest(
            prompts,
            step=step,
            seed=(self.args.seed * 1_000_003 + step) * 64 + self.args.process_index,
            eos=frozenset(eos_ids(self.gen_tokenizer, unwrap(model))),
            pad_id=self.pad_id,
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
        )
        completions = sampler.sample(model, request)
        if kind == ON:
            self._sampler_stats.update(self.sampler.stats())
        if c.log_samples_every and step % c.log_samples_every == 0 and self.is_world_process_zero():
            self._log_samples(step, kind, prompts, completions)
        out, start = [], 0
        for size, b in zip(sizes, batches, strict=True):
            batch = sequence_batch(
                prompts[start : start + size],
                completions[start : start + size],
                pad_id=self.pad_id,
                max_length=self.max_length,
            )
            if b.get("teacher_index") is not None:  # several teachers: each sample goes to its prompt's
                batch["teacher_index"] = b["teacher_index"].cpu().repeat_interleave(n)
            out.append(batch)
            start += size
        return out

    def _log_samples(self, step: int, kind: str, prompts, completions) -> None:
        tok = self.gen_tokenizer
        path = Path(self.args.output_dir) / SAMPLES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for p, c in zip(prompts, completions, strict=True):
                row = {
                    "step": step,
                    "kind": kind,
                    "prompt": tok.decode(p),
                    "completion": tok.decode(c),
                    "tokens": len(c),
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    # -- the loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        start, teacher_before = time.perf_counter(), self._timer["teacher"]
        loss = super().training_step(model, inputs, num_items_in_batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        spent = time.perf_counter() - start
        self._timer["student"] += spent - (self._timer["teacher"] - teacher_before)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop("prompt_ids", None)
        kind = inputs.pop("batch_kind", OFF)
        if kind != ON or self.teacher is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.on_policy.estimator == "sampled":
            loss = self._sampled_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss
        # The same step on the generated batch, KD only, its sums logged apart from the off-policy ones.
        spec, sums = self.spec, self._log_sums
        self.spec, self._log_sums = self.on_spec, self._on_sums
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._on_sums = self._log_sums
            self.spec, self._log_sums = spec, sums

    def _sampled_loss(self, model, inputs, num_items_in_batch):
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        targets = inputs["labels"][:, 1:]
        mask = targets != IGNORE_INDEX
        tokens = targets[mask]
        scores = self.teacher.score(TeacherQuery.from_batch(inputs))
        vocab, chunk = self.spec.vocab, self.spec.chunk_size
        t_lp = teacher_token_logprobs(scores, tokens, vocab, chunk).to(tokens.device)
        hidden = final_hidden(model, ids, attn)[:, :-1][mask]  # [N, H]
        head = Head.of(unwrap(model))
        total = hidden.new_zeros((), dtype=torch.float32)
        reward = torch.zeros((), dtype=torch.float32, device=hidden.device)

        def chunk_loss(h, toks, t_lp):  # [n, H] -> (loss sum, reward sum); logits recomputed in backward
            cfg = self.on_policy
            return sampled_token_loss(
                head.logits(h, vocab), toks, t_lp, temperature=cfg.temperature, top_p=cfg.top_p
            )

        for c in range(0, tokens.shape[0], chunk):
            rows = slice(c, c + chunk)
            # Checkpointed so that only one chunk's [chunk, vocab] logits live at a time, in backward too.
            part, r = checkpoint(chunk_loss, hidden[rows], tokens[rows], t_lp[rows], use_reentrant=False)
            total = total + part
            reward = reward + r.detach()
        n = int(tokens.shape[0])
        # reverse KL per token = -(mean reward): logged with the other on-policy sums
        parts = {"reverse_kl": -reward}
        return self.finish_loss(model, total, parts, n, num_items_in_batch, log_sums=self._on_sums)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            tokens = self._on_sums.pop("tokens", 0)
            for name, value in self._on_sums.items():
                if tokens:
                    logs[f"on_policy_{name}"] = round(value / tokens, 6)
            logs["on_policy_tokens"] = tokens
            self._on_sums = {}
            logs["lmbda"] = round(self.schedule.lmbda(self.state.global_step), 6)
            logs["on_policy_steps"] = self._counts[ON]
            if self.on_policy.seq_kd:
                logs["seq_kd_steps"] = self._counts[SEQ_KD]
            for name, value in self._timer.items():
                logs[f"time_{name}_s"] = round(value, 3)
            logs.update({name: round(value, 6) for name, value in self._sampler_stats.items()})
            self._sampler_stats = {}
            self._timer.update(sampling=0.0, teacher=0.0, student=0.0)
            self._counts = {ON: 0, SEQ_KD: 0}
        super().log(logs, *args, **kwargs)
