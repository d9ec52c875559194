"""Run configuration: one dataclass per concern, each field documented once (its `help`) with its default.

A run is described by a YAML file whose top-level sections are the fields of `RunConfig`, then
optional `section.key=value` overrides from the command line. `lmdistill config` prints every field
with its default and help; this module is the only place where they are written down.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from lmdistill import yamlconfig
from lmdistill.config_teachers import (  # noqa: F401 (re-exported: the teacher sections live there)
    CROSS_TOKENIZER_METHODS,
    ROUTING_MODES,
    RoutingConfig,
    TeacherConfig,
    TeacherEntry,
    check_teacher_list,
    check_teachers,
    resolve_teachers,
)
from lmdistill.errors import UserError
from lmdistill.yamlconfig import setting


@dataclass
class StudentConfig:
    name: str | None = setting(
        None, "Student: a Hugging Face id or local folder. Empty: build it by shrinking the teacher."
    )
    shrink_from: str | None = setting(
        None,
        "Shrinking: the model whose layers the student copies (HF id, folder or short name), e.g. smollm2-135m "
        "under a gemma3-270m teacher (with distill.cross_tokenizer); null: the teacher.",
    )
    num_layers: int | None = setting(10, "Shrinking: keep this many teacher layers, evenly spaced.")
    layers: list[int] | None = setting(
        None, "Shrinking: the exact teacher layer indices to copy (overrides num_layers)."
    )
    hidden_size: int | None = setting(
        None,
        "Shrinking narrower: student width (heads follow at the teacher's head_dim); null keeps the teacher's.",
    )
    num_attention_heads: int | None = setting(
        None, "Shrinking narrower: query heads (default hidden_size / head_dim)."
    )
    num_key_value_heads: int | None = setting(
        None, "Shrinking narrower: KV heads (default the largest divisor of the heads <= the teacher's)."
    )
    intermediate_size: int | None = setting(
        None, "Shrinking narrower: MLP width (default scaled with hidden_size)."
    )
    dtype: str = setting("float32", "Student weights dtype (the trained copy): float32, bfloat16, float16.")
    lora_r: int = setting(0, "LoRA rank (needs `pip install lmdistill[lora]`); 0 trains every weight.")
    lora_alpha: int = setting(16, "LoRA scaling alpha.")
    lora_target_modules: str = setting(
        "all-linear", "peft target modules: `all-linear` (not lm_head) or a comma list."
    )


@dataclass
class DataConfig:
    train: str = setting(
        "",
        "Training data: JSONL file, `datasets` folder or hub name; rows hold messages, prompt/completion or text.",
    )
    eval: str | None = setting(None, "Held-out data in the same layouts (optional).")
    max_length: int = setting(512, "Tokens per example; longer examples are cut at the end.")
    max_examples: int | None = setting(None, "Use at most this many training examples (the first ones).")


@dataclass
class DistillConfig:
    loss: str = setting(
        "forward_kl",
        "Divergence D: forward_kl, reverse_kl, jsd, skew_forward_kl, skew_reverse_kl, tvd.",
    )
    kd_ratio: float = setting(
        0.5, "Loss = (1 - kd_ratio) * CE(labels) + kd_ratio * T^2 * D(teacher, student)."
    )
    temperature: float = setting(1.0, "Softmax temperature T of both distributions in D (CE uses T = 1).")
    beta: float = setting(0.5, "jsd only: weight of the teacher in the mixture, strictly between 0 and 1.")
    alpha: float = setting(0.1, "skew losses only: skew weight in [0, 1].")
    chunk_size: int = setting(
        256,
        "Tokens per chunk through the heads (no full [tokens, vocab] logits); 256 keeps 5x under naive memory at vocab 49152.",
    )
    max_nonfinite: int = setting(
        5, "Stop after this many non-finite micro-batch losses in a row (each is skipped)."
    )
    teacher_store: str | None = setting(
        None,
        "A folder written by `lmdistill capture`: train from its top-k teacher log-probs instead of running "
        "the teacher (no teacher in memory).",
    )
    cross_tokenizer: str | None = setting(
        None,
        "A teacher with ANOTHER tokenizer: null (the tokenizers must match), byte_aligned (GOLD-style: both "
        "tokenize the same text, spans ending on the same byte are matched; `loss` on the tokens both "
        "vocabularies share, sorted-L1 on the rest) or uld (sorted-L1 only). The term replaces D: "
        "(1 - kd_ratio) * CE + kd_ratio * T^2 * term, summed over aligned spans and divided by target tokens "
        "like CE. Needs text or prompt/completion records and the teacher in this process. With several "
        "`teachers:`, the method of every entry that sets no cross_tokenizer of its own. See "
        "docs/cross_tokenizer.md.",
    )
    xtok_matched_weight: float = setting(
        1.0,
        "cross_tokenizer byte_aligned: weight of `loss` on the shared tokens (it is also scaled by the "
        "teacher's mass on them).",
    )
    xtok_unmatched_weight: float = setting(
        1.0,
        "cross_tokenizer: weight of the sorted-L1 term (uld: on whole distributions; byte_aligned: on the "
        "tokens not shared). With uld, ULD's lambda is kd_ratio * T^2 * xtok_unmatched_weight / (1 - kd_ratio).",
    )
    xtok_chunk_size: int = setting(
        64,
        "cross_tokenizer: positions per model through its head at once (a 262,144-token vocabulary is "
        "1 MB per position in fp32, sorted too for the L1 term).",
    )


@dataclass
class HintConfig:
    hidden_weight: float = setting(
        0.0, "Weight of hidden-state matching (teacher layer j vs phi(student layer i)); 0 = off."
    )
    layers: str | list[list[int]] = setting(
        "uniform",
        "Layer pairs: uniform, last, first_last, copied (the teacher layers a shrunk student was copied from), "
        "or a list of [student, teacher] pairs; layer i is the output of decoder layer i (0-based).",
    )
    metric: str = setting(
        "mse", "Hidden-state metric H: mse, cosine (1 - cos), ln_mse (mse of layer-normed features)."
    )
    projection: str = setting(
        "linear", "phi where widths differ: linear (learned, trained with the student) or none."
    )
    relation_weight: float = setting(0.0, "Weight of MiniLMv2 q-q/k-k/v-v attention-relation KL; 0 = off.")
    relation_layers: str | list[list[int]] = setting(
        "last", "Layer pairs for relations, same choices as `layers`."
    )
    relation_heads: int = setting(0, "Relation heads R (0 = the largest R <= 12 dividing every q/k/v width).")
    attention_weight: float = setting(
        0.0, "Weight of attention-map KL per head (needs eager attention, set automatically); 0 = off."
    )
    attention_layers: str | list[list[int]] = setting(
        "last", "Layer pairs for attention maps, same choices as `layers`."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.hidden_weight or self.relation_weight or self.attention_weight)


#: on_policy.schedule values and on_policy.estimator values.
ON_POLICY_SCHEDULES = ("constant", "linear", "adaptive")
ON_POLICY_ESTIMATORS = ("divergence", "sampled")
#: on_policy.sampler values, and vllm_sampler.sync values.
ON_POLICY_SAMPLERS = ("generate", "vllm")
VLLM_SYNCS = ("auto", "reload", "lora", "transfer")


@dataclass
class OnPolicyConfig:
    lmbda: float = setting(
        0.0,
        "Share of optimizer steps trained on the student's own samples (GKD's lambda): 0 = off-policy as "
        "without this section, 1 = fully on-policy. Decided once per optimizer step, the same on every process.",
    )
    seq_kd: bool = setting(
        False,
        "The other steps train on the teacher's own samples of the same prompts (sequence-level KD; needs the "
        "teacher in this process) instead of the data's answers.",
    )
    schedule: str = setting(
        "constant",
        "How lmbda moves: constant; linear (from 0 to lmbda over ramp_steps); adaptive (DistiLLM: starts at 0, "
        "rises by adaptive_step up to lmbda each time the held-out loss rises; needs data.eval).",
    )
    ramp_steps: int = setting(100, "linear: optimizer steps over which lmbda rises from 0 to its value.")
    adaptive_step: float = setting(0.1, "adaptive: how much lmbda rises each time the held-out loss rises.")
    replay_buffer_size: int = setting(
        0,
        "Replay buffer: keep the last N generated micro-batches and train on a stored one instead of "
        "sampling, with probability replay_ratio (DistiLLM); 0 = always sample fresh.",
    )
    replay_ratio: float = setting(
        0.5, "With replay_buffer_size > 0: probability that an on-policy step reuses stored samples."
    )
    estimator: str = setting(
        "divergence",
        "Loss on sampled sequences: divergence (distill.loss over the whole vocabulary with a teacher in this "
        "process, over top-k + tail with a server; no CE term) or sampled (the teacher's log-prob of each "
        "sampled token only: a policy-gradient step on reverse KL with per-token reward log p - log q).",
    )
    temperature: float = setting(1.0, "Sampling temperature (> 0).")
    top_p: float = setting(
        1.0, "Sampling nucleus: keep the smallest set of tokens with this much mass (0 < top_p <= 1)."
    )
    max_new_tokens: int = setting(
        128, "Tokens sampled per prompt at most; the prompt is cut to data.max_length minus this."
    )
    samples_per_prompt: int = setting(
        1, "Sampled completions per prompt (each a row of the on-policy batch)."
    )
    log_samples_every: int = setting(
        0,
        "Write sampled completions to output_dir/on_policy_samples.jsonl every N optimizer steps; 0 = never.",
    )
    sampler: str = setting(
        "generate",
        "Who samples the student's completions: generate (transformers, in this process) or vllm (a vLLM server "
        "serving the student, its weights synced every vllm_sampler.sync_every steps; docs/on_policy.md).",
    )

    @property
    def enabled(self) -> bool:
        """Whether any step may train on generated sequences."""
        return self.lmbda > 0 or self.seq_kd


@dataclass
class VllmSamplerConfig:
    """on_policy.sampler=vllm: the vLLM server that samples for the student, and how its weights follow."""

    url: str | None = setting(
        None,
        "The student's vLLM server, its OpenAI base URL (http://host:port/v1); needed with sampler=vllm.",
    )
    model: str | None = setting(
        None, "The served model name (vLLM's --served-model-name); empty = the only base model it serves."
    )
    sync: str = setting(
        "auto",
        "How the student's weights reach the server: lora (peft adapter via /v1/load_lora_adapter; server with "
        "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), reload (full weights from a folder via the "
        "dev-mode /collective_rpc reload_weights; VLLM_SERVER_DEV_MODE=1), transfer (full weights over NCCL through "
        "vLLM's RL weight-transfer API; GPU only, untested here; VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config "
        '\'{"backend": "nccl"}\'), auto (lora for a LoRA student, reload otherwise).',
    )
    sync_every: int = setting(
        1,
        "Sync the weights before an on-policy step when the server's are this many optimizer steps old or more: "
        "samples come from weights up to sync_every - 1 steps old.",
    )
    sync_dir: str | None = setting(
        None,
        "Folder the weights are written to for the server to read (the server must see the same path); empty = "
        "output_dir/vllm_sync.",
    )
    check_atol: float = setting(
        0.02,
        "After each sync, the sampled tokens' log-probs from vLLM must agree with the student's (temperature 1) "
        "to this mean absolute difference, in nats per token; a larger one stops the run.",
    )
    timeout: float = setting(600.0, "Seconds per request to the server (sampling, sync) before giving up.")
    transfer_host: str = setting(
        "127.0.0.1",
        "sync=transfer: this trainer's address as the server's workers reach it (they join an NCCL group whose "
        "TCP store the trainer hosts there, on a free port).",
    )


@dataclass
class TrainConfig:
    output_dir: str = setting("runs/distill", "Checkpoints, logs, the resolved config and the final student.")
    max_steps: int = setting(100, "Optimizer steps; <= 0 means train for num_train_epochs.")
    num_train_epochs: float = setting(1.0, "Epochs, used only when max_steps <= 0.")
    per_device_train_batch_size: int = setting(8, "Examples per device per micro-batch.")
    gradient_accumulation_steps: int = setting(1, "Micro-batches per optimizer step.")
    learning_rate: float = setting(5e-5, "Peak learning rate (AdamW).")
    lr_scheduler_type: str = setting("cosine", "transformers scheduler name: cosine, linear, constant, ...")
    warmup_steps: int = setting(0, "Linear warm-up steps.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.")
    seed: int = setting(42, "Seed for data order, initialisation and sampling.")
    logging_steps: int = setting(10, "Log every N steps.")
    save_steps: int = setting(500, "Checkpoint every N steps.")
    save_total_limit: int | None = setting(2, "Keep at most this many checkpoints.")
    resume_from_checkpoint: str | None = setting(
        None,
        "Resume: a checkpoint folder, or `latest` for the newest one in output_dir (an error when there is none).",
    )
    resume_with_changed_data: bool = setting(
        False,
        "On resume, train on (with a warning) when the tokenized training data differs from the data the run "
        "recorded (data_fingerprint.json in output_dir); without it such a resume is refused.",
    )
    overwrite_output_dir: bool = setting(
        False,
        "Replace output_dir when it holds a run with other settings (its checkpoints and student are deleted); "
        "without it such a folder is refused. A recipe applies it to its folder and its students.",
    )
    bf16: bool = setting(False, "bf16 mixed precision (GPU).")
    gradient_checkpointing: bool = setting(False, "Recompute student activations in backward to save memory.")
    fsdp: bool = setting(
        False,
        "Shard the student with FSDP2 across the processes of torchrun (weights, gradients, optimizer states); "
        "see docs/multi_gpu.md.",
    )
    fsdp_teacher: bool = setting(
        False,
        "Shard the in-process teacher with FSDP2 across the processes of torchrun too (frozen; each keeps 1/N).",
    )
    report_to: str = setting("none", "transformers reporting integrations: none, tensorboard, wandb, ...")
    extra: dict = setting({}, "Any other transformers.TrainingArguments fields, passed through as given.")


@dataclass
class RunConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teachers: list[TeacherEntry] = setting(
        [],
        "Several teachers (each entry below; `teacher:` is the one-teacher spelling, and a list of one is "
        "the same run): rows routed to one of them, or their distributions mixed per token, as routing: says. "
        "The first entry's name is the run's tokenizer and the model a student is shrunk from.",
    )
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    hints: HintConfig = field(default_factory=HintConfig)
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    vllm_sampler: VllmSamplerConfig = field(default_factory=VllmSamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        """Check values that YAML types cannot; raise UserError naming the key."""
        from lmdistill.losses import LOSSES

        d = self.distill
        if d.loss not in LOSSES:
            raise UserError(f"distill.loss: unknown loss {d.loss!r}; choose one of {', '.join(LOSSES)}")
        if not 0.0 <= d.kd_ratio <= 1.0:
            raise UserError(f"distill.kd_ratio must be in [0, 1], got {d.kd_ratio}")
        if not (math.isfinite(d.temperature) and d.temperature > 0):
            raise UserError(f"distill.temperature must be a finite number > 0, got {d.temperature}")
        if d.loss == "jsd" and not 0.0 < d.beta < 1.0:
            raise UserError(
                f"distill.beta must be strictly between 0 and 1 for jsd, got {d.beta} "
                "(at the endpoints use loss: forward_kl or reverse_kl)"
            )
        if not 0.0 <= d.alpha <= 1.0:
            raise UserError(f"distill.alpha must be in [0, 1], got {d.alpha}")
        if d.chunk_size <= 0:
            raise UserError(f"distill.chunk_size must be positive, got {d.chunk_size}")
        check_cross_tokenizer(self)
        check_teachers(self)
        if self.teacher.server and d.teacher_store:
            raise UserError(
                "give teacher.server or distill.teacher_store, not both: both stand in for the teacher"
            )
        h = self.hints
        for key in ("hidden_weight", "relation_weight", "attention_weight"):
            if getattr(h, key) < 0:
                raise UserError(f"hints.{key} must be >= 0, got {getattr(h, key)}")
        if h.projection not in ("linear", "none"):
            raise UserError(f"hints.projection: choose linear or none, got {h.projection!r}")
        if h.relation_heads < 0:
            raise UserError(f"hints.relation_heads must be >= 0, got {h.relation_heads}")
        if self.data.max_examples is not None and self.data.max_examples < 1:
            raise UserError(
                f"data.max_examples must be at least 1 (or null for all), got {self.data.max_examples}"
            )
        if self.data.max_length < 2:
            raise UserError(f"data.max_length must be at least 2, got {self.data.max_length}")
        s = self.student
        if s.name is None and s.layers is None and (s.num_layers is None or s.num_layers <= 0):
            raise UserError(
                "student: give student.name, or student.num_layers > 0 / student.layers to shrink"
            )
        if s.name and s.shrink_from:
            raise UserError(
                f"student.name ({s.name}) and student.shrink_from ({s.shrink_from}) both given: a student is "
                "either a model of its own or shrunk from one; drop one"
            )
        if s.lora_r < 0:
            raise UserError(f"student.lora_r must be >= 0, got {s.lora_r}")
        t = self.train
        if t.max_steps <= 0 and not t.num_train_epochs > 0:
            raise UserError(
                f"train.max_steps={t.max_steps} and train.num_train_epochs={t.num_train_epochs}: nothing to "
                "train; set train.max_steps > 0, or train.max_steps=0 with train.num_train_epochs > 0"
            )
        if t.per_device_train_batch_size <= 0 or t.gradient_accumulation_steps <= 0:
            raise UserError(
                "train.per_device_train_batch_size and gradient_accumulation_steps must be positive"
            )
        check_train_numbers(t)
        check_report_to(t.report_to)
        self._validate_on_policy()
        return self

    def _validate_on_policy(self) -> None:
        o = self.on_policy
        if not 0.0 <= o.lmbda <= 1.0:
            raise UserError(f"on_policy.lmbda must be in [0, 1], got {o.lmbda}")
        if o.schedule not in ON_POLICY_SCHEDULES:
            raise UserError(
                f"on_policy.schedule: unknown schedule {o.schedule!r}; choose one of {', '.join(ON_POLICY_SCHEDULES)}"
            )
        if o.estimator not in ON_POLICY_ESTIMATORS:
            raise UserError(
                f"on_policy.estimator: unknown estimator {o.estimator!r}; choose one of "
                f"{', '.join(ON_POLICY_ESTIMATORS)}"
            )
        if o.max_new_tokens <= 0:
            raise UserError(f"on_policy.max_new_tokens must be at least 1, got {o.max_new_tokens}")
        if o.sampler not in ON_POLICY_SAMPLERS:
            raise UserError(
                f"on_policy.sampler: unknown sampler {o.sampler!r}; choose one of {', '.join(ON_POLICY_SAMPLERS)}"
            )
        if not o.enabled:
            return
        if o.sampler == "vllm":
            self._validate_vllm_sampler()
        if self.distill.teacher_store:
            raise UserError(
                "on_policy: distill.teacher_store holds scores of the data's fixed sequences and cannot score the "
                "student's new samples: use the teacher in this process or teacher.server"
            )
        if o.max_new_tokens >= self.data.max_length:
            raise UserError(
                f"on_policy.max_new_tokens={o.max_new_tokens} leaves no room for the prompt in "
                f"data.max_length={self.data.max_length}"
            )
        if not (math.isfinite(o.temperature) and o.temperature > 0):
            raise UserError(f"on_policy.temperature must be a finite number > 0, got {o.temperature}")
        if not 0.0 < o.top_p <= 1.0:
            raise UserError(f"on_policy.top_p must be in (0, 1], got {o.top_p}")
        if o.samples_per_prompt < 1:
            raise UserError(f"on_policy.samples_per_prompt must be at least 1, got {o.samples_per_prompt}")
        if o.schedule == "linear" and o.ramp_steps < 1:
            raise UserError(f"on_policy.ramp_steps must be at least 1, got {o.ramp_steps}")
        if o.schedule == "adaptive" and not 0.0 < o.adaptive_step <= 1.0:
            raise UserError(f"on_policy.adaptive_step must be in (0, 1], got {o.adaptive_step}")
        if o.schedule == "adaptive" and not self.data.eval:
            raise UserError(
                "on_policy.schedule=adaptive raises lmbda when the held-out loss rises: set data.eval"
            )
        if o.replay_buffer_size < 0 or not 0.0 <= o.replay_ratio <= 1.0:
            raise UserError("on_policy.replay_buffer_size must be >= 0 and on_policy.replay_ratio in [0, 1]")
        if o.replay_buffer_size and o.estimator == "sampled":
            raise UserError(
                "on_policy.replay_buffer_size with estimator=sampled: the sampled estimator needs samples from the current "
                "student (its importance weight), stored ones are older; set replay_buffer_size to 0 or use divergence"
            )
        if o.log_samples_every < 0:
            raise UserError(f"on_policy.log_samples_every must be >= 0, got {o.log_samples_every}")
        if o.seq_kd and self.teacher.server:
            raise UserError(
                "on_policy.seq_kd samples from the teacher, which needs it in this process: drop teacher.server"
            )
        if self.hints.enabled:
            raise UserError(
                "on_policy: hint terms are not supported on generated sequences; set the hint weights to 0"
            )
        if self.distill.cross_tokenizer:
            raise UserError(
                "on_policy with distill.cross_tokenizer is not supported yet: the teacher would have to score the "
                "student's samples in its own tokenization; drop one of them"
            )
        if self.train.fsdp:
            raise UserError(
                "on_policy with train.fsdp is not supported yet (sampling needs the student's full weights); "
                "use DDP (torchrun/accelerate without fsdp)"
            )

    def _validate_vllm_sampler(self) -> None:
        v, o = self.vllm_sampler, self.on_policy
        if not v.url:
            raise UserError(
                "on_policy.sampler=vllm needs vllm_sampler.url, the student's vLLM server (http://host:port/v1)"
            )
        if v.sync not in VLLM_SYNCS:
            raise UserError(
                f"vllm_sampler.sync: unknown sync {v.sync!r}; choose one of {', '.join(VLLM_SYNCS)}"
            )
        if v.sync == "lora" and not self.student.lora_r:
            raise UserError(
                "vllm_sampler.sync=lora needs a LoRA student (student.lora_r > 0); a full student syncs with reload"
            )
        if v.sync in ("reload", "transfer") and self.student.lora_r:
            raise UserError(
                f"vllm_sampler.sync={v.sync} with a LoRA student (student.lora_r > 0): its adapter syncs with lora"
            )
        if v.sync == "transfer":
            import torch

            if not torch.cuda.is_available():
                raise UserError(
                    "vllm_sampler.sync=transfer broadcasts the student's weights over NCCL from a GPU, and this "
                    "trainer has no CUDA (torch.cuda.is_available() is false): on CPU use sync=reload (full "
                    "student) or sync=lora (LoRA student)"
                )
        if v.sync_every < 1:
            raise UserError(f"vllm_sampler.sync_every must be at least 1, got {v.sync_every}")
        if not (math.isfinite(v.check_atol) and v.check_atol > 0):
            raise UserError(f"vllm_sampler.check_atol must be a finite number > 0, got {v.check_atol}")
        if not (math.isfinite(v.timeout) and v.timeout > 0):
            raise UserError(f"vllm_sampler.timeout must be a finite number > 0, got {v.timeout}")
        if o.estimator == "sampled" and v.sync_every > 1:
            raise UserError(
                f"vllm_sampler.sync_every={v.sync_every} with on_policy.estimator=sampled: the sampled estimator "
                "needs samples from the current student (its importance weight), older ones come from up to "
                f"{v.sync_every - 1} steps back; set sync_every to 1 or use estimator=divergence"
            )

    @property
    def vllm_sync(self) -> str:
        """vllm_sampler.sync with auto resolved: lora for a LoRA student, reload otherwise."""
        s = self.vllm_sampler.sync
        return ("lora" if self.student.lora_r else "reload") if s == "auto" else s


def check_train_numbers(t: TrainConfig) -> None:
    """The optimizer's and the logger's numbers, checked with the rest of the config: transformers and
    torch refuse them only once training starts (after the run's folder is claimed), with a traceback."""
    for key in ("learning_rate", "weight_decay", "max_grad_norm"):
        value = getattr(t, key)
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"train.{key} must be a finite number >= 0, got {value}")
    if not 0 <= t.seed < 2**32:  # numpy's and torch's seeds are unsigned 32-bit
        raise UserError(f"train.seed must be an integer in [0, 2**32), got {t.seed}")
    if t.warmup_steps < 0:
        raise UserError(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    for key in ("logging_steps", "save_steps"):
        if getattr(t, key) < 1:
            raise UserError(f"train.{key} must be at least 1, got {getattr(t, key)}")
    if t.save_total_limit is not None and t.save_total_limit < 1:
        raise UserError(
            f"train.save_total_limit must be at least 1 (or null to keep every checkpoint), got {t.save_total_limit}"
        )


def check_report_to(report_to: str) -> None:
    """train.report_to names integrations transformers knows and this environment has installed."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if not names or names == ["none"]:
        return
    from transformers.integrations import integration_utils

    known = list(integration_utils.INTEGRATION_TO_CALLBACK)
    installed = integration_utils.get_available_reporting_integrations()
    for name in names:
        if name == "all":
            continue
        if name not in known:
            raise UserError(
                f"train.report_to: unknown integration {name!r}; choose none, all or some of {', '.join(known)}"
            )
        if name not in installed:
            raise UserError(
                f"train.report_to: {name} is not installed in this environment (pip install {name}), "
                "or set train.report_to=none"
            )


def check_cross_tokenizer(cfg: RunConfig) -> None:
    """distill.cross_tokenizer and what it needs: the teacher model in this process, the KD term on, no
    hint terms (UserError naming the key); the distill.xtok_* numbers for teachers[i].cross_tokenizer too
    (whose own needs `lmdistill.config_teachers` checks with the list)."""
    d = cfg.distill
    if d.cross_tokenizer is None and not any(e.cross_tokenizer for e in cfg.teachers):
        return
    if d.cross_tokenizer is not None and d.cross_tokenizer not in CROSS_TOKENIZER_METHODS:
        raise UserError(
            f"distill.cross_tokenizer: unknown method {d.cross_tokenizer!r}; choose "
            f"{' or '.join(CROSS_TOKENIZER_METHODS)} (or null when the tokenizers match)"
        )
    for key in ("xtok_matched_weight", "xtok_unmatched_weight"):
        value = getattr(d, key)
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"distill.{key} must be a finite number >= 0, got {value}")
    if d.xtok_chunk_size <= 0:
        raise UserError(f"distill.xtok_chunk_size must be positive, got {d.xtok_chunk_size}")
    if d.cross_tokenizer is None:  # only teachers[i].cross_tokenizer: checked with the list
        return
    elsewhere = "distill.teacher_store" if d.teacher_store else "teacher.server" if cfg.teacher.server else ""
    if elsewhere:
        raise UserError(
            f"distill.cross_tokenizer needs the teacher model in this process (its hidden states on its own "
            f"tokens), which {elsewhere} does not give: drop {elsewhere}"
        )
    if cfg.hints.enabled:
        raise UserError(
            "distill.cross_tokenizer cannot be combined with hint terms (hints.*_weight > 0): their positions "
            "assume one tokenization; set the hint weights to 0"
        )
    if d.kd_ratio == 0:
        raise UserError(
            "distill.cross_tokenizer is set but distill.kd_ratio is 0, so the teacher is never read: "
            "set distill.kd_ratio > 0 or drop distill.cross_tokenizer"
        )


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RunConfig:
    """Read a training config (or start from defaults when `path` is None), apply overrides, validate."""
    return yamlconfig.load(RunConfig, path, overrides).validate()


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    yamlconfig.save(cfg, path)


def describe_fields() -> str:
    """Every training-config key with its default and help: the text `lmdistill config` prints."""
    return yamlconfig.describe(RunConfig)
