"""The interface on-policy training samples through, and its in-process implementation.

`OnPolicyTrainer` asks a sampler for one completion per prompt of a window (`sample`) and logs what
`stats` returns; it does not know who samples. Implementations: `GenerateSampler` (transformers
`generate` in this process) and `lmdistill.training.samplers.vllm.VllmSampler` (a vLLM server whose
weights follow the student's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SampleRequest:
    """A window's prompts and how to sample them.

    prompts: token ids per row (one row per completion wanted); step: the optimizer step about to be
    taken (the student's weights are those after `step` updates); seed: the window's seed (rows derive
    theirs); eos: ids that end a completion; pad_id: padding for batched generation.
    """

    prompts: list[list[int]]
    step: int
    seed: int
    eos: frozenset[int]
    pad_id: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


class CompletionSampler(Protocol):
    def sample(self, model: torch.nn.Module, request: SampleRequest) -> list[list[int]]:
        """Per prompt, the new token ids up to and including the first EOS (all of them when none came)."""
        ...

    def stats(self) -> dict[str, float]:
        """Figures for the log since the last call (may be empty)."""
        ...


def cut_at_eos(ids: list[int], eos: frozenset[int] | set[int]) -> list[int]:
    """`ids` up to and including the first EOS."""
    return ids[: next((t + 1 for t, tok in enumerate(ids) if tok in eos), len(ids))]


class GenerateSampler:
    """transformers `generate` on the student in this process (`lmdistill.training.sampling`): always the
    current weights, no staleness."""

    def sample(self, model: torch.nn.Module, request: SampleRequest) -> list[list[int]]:
        from lmdistill.training.sampling import sample_completions

        r = request
        return sample_completions(
            model,
            r.prompts,
            pad_id=r.pad_id,
            eos=set(r.eos),
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            seed=r.seed,
        )

    def stats(self) -> dict[str, float]:
        return {}
