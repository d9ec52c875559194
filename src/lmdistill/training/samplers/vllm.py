"""On-policy samples from a vLLM server serving the student, its weights synced every N optimizer steps.

Per on-policy window at optimizer step `step` (the student has taken `step` updates):
1. sync, when the server has never had this run's weights or they are `sync_every` or more steps old:
   process 0 writes the student to a folder and tells the server to load it (`weight_sync`), or
   broadcasts it over NCCL (`weight_transfer`, GPU only); every
   process waits for the outcome (one broadcast), so a failed sync stops all of them with one message;
2. every process sends its own prompts (one request per row, concurrently; vLLM batches them) and gets
   its completions with vLLM's log-prob of each sampled token;
3. right after a sync the server's weights are exactly the student's, so the samples are checked: the
   student's log-probs of the sampled tokens against vLLM's (`logprob_check`), averaged over every
   process's tokens; a mean difference above `check_atol` is one UserError naming the step.

Staleness: samples at step s come from the weights of step s - (s - synced) with s - synced in
[0, sync_every - 1]. The loss does not reweight them: the divergence estimator is a divergence between
teacher and current student on whatever sequences it is given (as for the replay buffer, whose samples
are older still), so older samples shift which sequences are trained on, not what the loss is on them;
the `sampled` estimator's importance weight assumes the current student sampled, so the config refuses
it with sync_every > 1. Logged: `vllm_staleness` (steps, last window), `time_sync_s`, and after each
sync `vllm_logprob_diff` (mean |difference|, nats/token) and `time_check_s` (the check's student forwards).
Both times are part of the trainer's `time_sampling_s`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist

from lmdistill.errors import UserError
from lmdistill.training.samplers.base import SampleRequest, cut_at_eos
from lmdistill.training.samplers.logprob_check import agreement, student_token_logprobs
from lmdistill.training.samplers.vllm_client import SamplingSettings, VllmClient
from lmdistill.training.samplers.weight_sync import LoraSync, ReloadSync

#: vllm_sampler.sync -> how the weights reach the server (`weight_transfer` imports torch.cuda bits lazily)
SYNCS = {"reload": ReloadSync, "lora": LoraSync}


def _sync_class(sync: str):
    if sync == "transfer":
        from lmdistill.training.samplers.weight_transfer import TransferSync

        return TransferSync
    return SYNCS[sync]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


class VllmSampler:
    """Args: client (connected: `VllmClient.connect`), sync ("reload", "lora" or "transfer"), sync_dir (a
    folder the server reads too; not used by transfer), sync_every (steps), check_atol (nats/token)."""

    def __init__(
        self, client: VllmClient, *, sync: str, sync_dir: str | Path, sync_every: int, check_atol: float
    ):
        self.client = client
        self.sync = _sync_class(sync)(client, Path(sync_dir))
        self.sync_every, self.check_atol = sync_every, check_atol
        self.synced_at: int | None = None
        self._stats: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg, tokenizer) -> VllmSampler:
        """Connected and checked (reachable, model, vocabulary, sync route) before any weights load."""
        v = cfg.vllm_sampler
        client = VllmClient(v.url, v.model, v.timeout).connect(tokenizer, cfg.vllm_sync)
        sync_dir = v.sync_dir or str(Path(cfg.train.output_dir) / "vllm_sync")
        sampler = cls(
            client, sync=cfg.vllm_sync, sync_dir=sync_dir, sync_every=v.sync_every, check_atol=v.check_atol
        )
        if cfg.vllm_sync == "transfer":
            sampler.sync.open(v.transfer_host)  # the NCCL group, once (process 0)
        return sampler

    # -- the interface

    def sample(self, model: torch.nn.Module, request: SampleRequest) -> list[list[int]]:
        r = request
        fresh = self.synced_at is None or r.step - self.synced_at >= self.sync_every
        if fresh:
            self._sync(model, r.step)
        settings = SamplingSettings(r.max_new_tokens, r.temperature, r.top_p, tuple(sorted(r.eos)))
        seeds = [(r.seed * 1_000_003 + i) % (1 << 62) for i in range(len(r.prompts))]
        rows = self.client.sample(r.prompts, seeds, settings, model=self.sync.served)
        completions = [cut_at_eos(row.token_ids, r.eos) for row in rows]
        reported = [row.logprobs[: len(c)] for row, c in zip(rows, completions, strict=True)]
        self._stats["vllm_staleness"] = float(r.step - self.synced_at)
        if fresh:
            start = time.perf_counter()
            self.check(model, r.prompts, completions, reported, r.step)
            self._stats["time_check_s"] = self._stats.get("time_check_s", 0.0) + time.perf_counter() - start
        return completions

    def stats(self) -> dict[str, float]:
        out, self._stats = self._stats, {}
        return out

    # -- sync and check

    def _sync(self, model: torch.nn.Module, step: int) -> None:
        start = time.perf_counter()
        outcome = [None, self.sync.served]
        if _rank() == 0:
            try:
                self.sync.push(model, step)
                outcome[1] = self.sync.served
            except (UserError, OSError) as e:
                outcome[0] = str(e)
        if _distributed():
            dist.broadcast_object_list(outcome, src=0)
        if outcome[0] is not None:
            raise UserError(
                f"on_policy step {step}: sending the student's weights to the vLLM server failed ({outcome[0]}); "
                f"the checkpoints written so far are whole. {self.sync.failure_hint}"
            )
        self.sync.served = outcome[1]
        self.synced_at = step
        self._stats["time_sync_s"] = self._stats.get("time_sync_s", 0.0) + time.perf_counter() - start

    def check(
        self,
        model: torch.nn.Module,
        prompts: list[list[int]],
        completions: list[list[int]],
        reported: list[list[float]],
        step: int,
    ) -> float:
        """Mean |student - vLLM| log-prob over every process's sampled tokens; UserError above check_atol."""
        a = agreement(student_token_logprobs(model, prompts, completions), reported)
        totals = torch.tensor([a.mean_abs * a.tokens, float(a.tokens), a.max_abs], dtype=torch.float64)
        if _distributed():
            device = next(model.parameters()).device if dist.get_backend() == "nccl" else torch.device("cpu")
            totals = totals.to(device)
            sums = totals[:2].clone()
            dist.all_reduce(sums)
            peak = totals[2:].clone()
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
            totals = torch.cat([sums, peak]).cpu()
        tokens = int(totals[1])
        mean = float(totals[0]) / tokens if tokens else 0.0
        self._stats["vllm_logprob_diff"] = mean
        if mean > self.check_atol:
            raise UserError(
                f"on_policy step {step}: the vLLM server's samples are not the student's: over {tokens} sampled "
                f"tokens their log-probs differ from the student's by {mean:.4g} nats on average (max "
                f"{float(totals[2]):.4g}), above vllm_sampler.check_atol={self.check_atol}, right after the weights "
                f"were synced. The sync did not take, or {self.client.where} serves another model (or a LoRA "
                "adapter on another base), or returns processed log-probs (--logprobs-mode must be raw_logprobs)"
            )
        return mean
