"""The run's sampler part: where each step's sequences come from.

- `DataSampler`: the data's own sequences (every off-policy method);
- `OnPolicySampler`: on-policy steps (`on_policy:` in the config): the student's own samples (or the
  teacher's, seq-KD) replace a step's batch as the schedule says, run by
  `lmdistill.training.on_policy.OnPolicyTrainer`; batches carry their prompts (`PromptCollator`). The
  student samples through `on_policy.sampler`: transformers' `generate` in this process, or a vLLM
  server (`lmdistill.training.samplers.vllm`), connected and checked by `connect` before any weights load.

A sampler gives the trainer class that runs its steps, the collator around the data's, and the extra
arguments that trainer takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmdistill.config import RunConfig
from lmdistill.training.parts.models import Models


@dataclass
class DataSampler:
    """Off-policy: the trainer the launcher gives, the data's collator, nothing else."""

    def connect(self, cfg: RunConfig, tokenizer) -> None:
        return None

    def trainer_class(self, launcher_class: type) -> type:
        return launcher_class

    def collator(self, base):
        return base

    def trainer_kwargs(self, cfg: RunConfig, models: Models) -> dict:
        return {}


@dataclass
class OnPolicySampler:
    """On-policy steps through `OnPolicyTrainer` (refused with train.fsdp by the config's checks).

    completions: who samples the student's completions; None until `connect` (or `trainer_kwargs`) builds it.
    """

    completions: object | None = field(default=None)

    def connect(self, cfg: RunConfig, tokenizer) -> None:
        """Build the completion sampler; a vLLM server is reached and checked here (UserError)."""
        if self.completions is not None:
            return
        if cfg.on_policy.sampler == "vllm":
            from lmdistill.training.samplers.vllm import VllmSampler

            self.completions = VllmSampler.from_config(cfg, tokenizer)
        else:
            from lmdistill.training.samplers import GenerateSampler

            self.completions = GenerateSampler()

    def trainer_class(self, launcher_class: type) -> type:
        from lmdistill.training.on_policy import OnPolicyTrainer

        return OnPolicyTrainer

    def collator(self, base):
        from lmdistill.training.sampling import PromptCollator

        return PromptCollator(base)

    def trainer_kwargs(self, cfg: RunConfig, models: Models) -> dict:
        self.connect(cfg, models.tokenizer)
        return dict(
            sampler=self.completions,
            on_policy=cfg.on_policy,
            tokenizer=models.tokenizer,
            max_length=cfg.data.max_length,
            teacher_model=models.teacher,
        )


def choose_sampler(cfg: RunConfig) -> DataSampler | OnPolicySampler:
    return OnPolicySampler() if cfg.on_policy.enabled else DataSampler()
