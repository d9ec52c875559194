"""HTTP calls to the student's vLLM server (vLLM 0.32's OpenAI server), each failure one UserError.

- `connect`: GET /v1/models (reachable; the served model), then the checks a run needs before any
  weights load: the server's vocabulary is the student's (probe token ids out, vLLM's `prompt_logprobs`
  texts back, compared with the local tokenizer), and the sync route is there: `/v1/load_lora_adapter`
  (registered only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), `/collective_rpc` (registered only with
  VLLM_SERVER_DEV_MODE=1) or the RL weight-transfer routes (`weight_transfer.TransferRoutes.check`). A
  missing route answers 404; the probes send bodies vLLM refuses as invalid (400/422), so they change
  nothing on a server that has the route. For reload and transfer, a served folder readable here must be
  untied (`weight_sync` says why).
  Its log-probs must be raw (`--logprobs-mode raw_logprobs`, vLLM's default): the sample check compares
  vLLM's log-prob of each sampled token with the student's log_softmax at temperature 1. The mode is read
  from the dev-mode `/server_info` where the server has it (reload servers do), else measured
  (`_measured_logprobs_mode`): processed log-probs change with the temperature, logits are no
  distribution.
- `sample`: one /v1/completions request per prompt (token ids in, `return_token_ids`, `logprobs: 0`:
  the sampled token's own log-prob), sent concurrently so that vLLM batches them; each with its own seed.
- `load_adapter` / `unload_adapter` (LoRA), `reload_weights` + `reset_prefix_cache` (full weights).
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lmdistill.errors import UserError

#: Requests in flight at once while sampling (vLLM batches what is in flight).
MAX_IN_FLIGHT = 64


@dataclass(frozen=True)
class SampledRow:
    """One completion from the server: token ids [T] and vLLM's log-prob of each [T] (nats, raw model
    distribution at temperature 1 with vLLM's default --logprobs-mode raw_logprobs)."""

    token_ids: list[int]
    logprobs: list[float]


@dataclass(frozen=True)
class SamplingSettings:
    """What every request samples with (top_k off, no penalties: the distribution the loss assumes)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    stop_ids: tuple[int, ...]


def _httpx():
    try:
        import httpx
    except ImportError:
        raise UserError("on_policy.sampler=vllm needs httpx: pip install 'lmdistill[api]'") from None
    return httpx


class VllmClient:
    """The server at `url` (its /v1 base) serving `model`; `where` names it in every message."""

    def __init__(self, url: str, model: str | None, timeout: float):
        httpx = _httpx()
        self.base = url.rstrip("/")
        self.root = self.base[: -len("/v1")] if self.base.endswith("/v1") else self.base
        self.model, self.timeout = model, timeout
        self.where = f"vllm_sampler.url {self.base}"
        self._http = httpx.Client(timeout=timeout)
        self._errors = (httpx.HTTPError,)
        #: the log-prob mode probe's top log-probs (at temperature 1, at 0.5) once it was measured
        self.mode_probe: tuple[list[float], list[float]] | None = None

    # -- plumbing

    def _post(self, path: str, body, what: str, *, ok_codes=(200,)):
        url = (
            self.root if path.startswith("/collective_rpc") or path.startswith("/reset") else self.base
        ) + path
        try:
            response = self._http.post(url, json=body)
        except self._errors as e:
            raise UserError(f"{self.where}: {what} failed: {type(e).__name__}: {e}") from None
        if response.status_code not in ok_codes:
            raise UserError(
                f"{self.where}: {what} failed: HTTP {response.status_code}: {response.text[:300]}"
            )
        return response

    # -- checks before training

    def connect(self, tokenizer, sync: str) -> VllmClient:
        """Reachable, serving `model` (or exactly one base model), the student's vocabulary, the sync route."""
        try:
            listed = self._http.get(self.base + "/models").json()
        except self._errors as e:
            raise UserError(
                f"{self.where} is not reachable ({type(e).__name__}: {e}): start the student's vLLM server "
                "first (docs/on_policy.md)"
            ) from None
        except ValueError:
            raise UserError(f"{self.where}/models did not answer JSON: is this a vLLM server?") from None
        bases = [m for m in listed.get("data", []) if isinstance(m, dict) and not m.get("parent")]
        names = [m.get("id") for m in bases]
        if self.model is None:
            if len(names) != 1:
                raise UserError(f"{self.where} serves {names or 'no models'}: set vllm_sampler.model to one")
            self.model = names[0]
        elif self.model not in names:
            raise UserError(
                f"{self.where} does not serve {self.model!r} (it serves {', '.join(map(repr, names))}): "
                "set vllm_sampler.model to the student's --served-model-name"
            )
        self._check_vocab(tokenizer)
        self._check_route(sync)
        if sync in ("reload", "transfer"):
            self._check_untied(next(m for m in bases if m.get("id") == self.model).get("root"))
        self._check_logprobs_mode(tokenizer)
        return self

    def _check_untied(self, root: str | None) -> None:
        """vLLM 0.32's in-place reload leaves a tied LM head stale (`weight_sync`): where the served folder
        is readable here (same machine), its config must not tie the head to the embedding."""
        config = Path(root) / "config.json" if root else None
        try:
            tied = json.loads(config.read_text()).get("tie_word_embeddings") if config else None
        except (OSError, ValueError):
            return  # another machine's path: the log-prob check after each sync still catches a stale head
        if tied:
            raise UserError(
                f"{self.where} serves {root}, whose config ties the LM head to the embedding: vLLM's in-place "
                "reload then keeps the head's old weights. Serve an untied copy of the student: lmdistill export "
                "STUDENT OUT_FOLDER --untie-embeddings (docs/on_policy.md)"
            )

    def _check_vocab(self, tokenizer) -> None:
        from lmdistill.models.vocab import real_vocab_size
        from lmdistill.teachers.whitebox.server_probe import probe_ids, same_token

        ids = probe_ids(tokenizer, real_vocab_size(tokenizer))
        body = {"model": self.model, "prompt": list(ids), "max_tokens": 1, "prompt_logprobs": 0}
        response = self._http.post(self.base + "/completions", json=body)
        if response.status_code >= 500:
            raise UserError(
                f"{self.where} is broken: it answered the first completion request with HTTP {response.status_code}: "
                f"{response.text[:200]}. Restart the student's vLLM server (a failed weight reload leaves vLLM 0.32's "
                "engine dead)"
            )
        if response.status_code != 200:
            raise UserError(
                f"{self.where} refused the student's probe token ids (up to {max(ids)}): HTTP "
                f"{response.status_code}: {response.text[:200]}. Serve the student, whose tokenizer this run uses"
            )
        entries = (response.json().get("choices") or [{}])[0].get("prompt_logprobs") or []
        wrong = []
        for i, entry in zip(ids[1:], entries[1:], strict=False):
            text = (entry or {}).get(str(i), {}).get("decoded_token")
            if text is not None and not same_token(tokenizer, i, text):
                wrong.append(f"id {i} is {text!r} there but {tokenizer.decode([i])!r} here")
        if wrong:
            raise UserError(
                f"{self.where} ({self.model}) does not use the student's vocabulary: {len(wrong)} of {len(ids) - 1} "
                f"probe tokens differ, e.g. {'; '.join(wrong[:2])}. Serve the student"
            )

    def _check_logprobs_mode(self, tokenizer) -> None:
        mode, how = self._server_logprobs_mode(), "its /server_info says"
        if mode is None:
            mode = self._measured_logprobs_mode(tokenizer)
            at_1, at_half = (", ".join(f"{v:.4g}" for v in vs) for vs in self.mode_probe)
            how = f"measured: top log-probs {at_1} at temperature 1, {at_half} at 0.5"
        if mode == "raw_logprobs":
            return
        if mode == "processed_logprobs":
            what = "processed log-probs, which change with the sampling temperature"
        else:
            what = "logits, not log-probs"
        flag = "raw_logits or processed_logits" if mode == "logits" else mode
        raise UserError(
            f"{self.where} returns {what} (--logprobs-mode {flag}; {how}): the run compares vLLM's log-prob of "
            "each sampled token with the student's log_softmax at temperature 1. Start it with "
            "--logprobs-mode raw_logprobs (vLLM's default)"
        )

    def _server_logprobs_mode(self) -> str | None:
        """`model_config.logprobs_mode` from vLLM's dev-mode GET /server_info; None where it has none."""
        try:
            response = self._http.get(self.root + "/server_info", params={"config_format": "json"})
            if response.status_code != 200:
                return None
            return response.json()["vllm_config"]["model_config"]["logprobs_mode"]
        except (*self._errors, ValueError, KeyError, TypeError):
            return None

    def _measured_logprobs_mode(self, tokenizer) -> str:
        """The top 5 log-probs after a fixed prompt, sampled at temperature 1 and at 0.5: raw log-probs are
        the same numbers at both (the model's distribution); processed ones (`processed_logprobs`) are the
        sharpened distribution at 0.5; logits (`raw_logits`, `processed_logits`) are no distribution (a
        value above 0, a mass above 1, or a largest value below -log V). Returns "raw_logprobs",
        "processed_logprobs" or "logits"."""
        from lmdistill.models.vocab import real_vocab_size
        from lmdistill.teachers.whitebox.server_probe import probe_ids

        vocab = real_vocab_size(tokenizer)
        prompt = list(probe_ids(tokenizer, vocab))

        def top(temperature: float) -> dict[str, float]:
            body = {
                "model": self.model,
                "prompt": prompt,
                "max_tokens": 1,
                "temperature": temperature,
                "top_p": 1.0,
                "top_k": -1,
                "logprobs": 5,
                "return_tokens_as_token_ids": True,  # keys "token_id:N": two tokens never share one
                "seed": 0,
            }
            choice = self._post("/completions", body, "the log-prob mode probe").json()["choices"][0]
            tops = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
            return {str(k): float(v) for k, v in (tops[0] or {}).items()}

        t1, half = top(1.0), top(0.5)
        # the top 5 at both (each reply adds the sampled token when it is not among them)
        common = sorted(set(t1) & set(half), key=lambda k: -t1[k])[:5]
        if len(common) < 2:
            raise UserError(
                f"{self.where}: the log-prob mode probe's replies carry no comparable top_logprobs"
            )
        at_1, at_half = [t1[k] for k in common], [half[k] for k in common]
        self.mode_probe = (at_1, at_half)
        mass = sum(math.exp(min(v, 50.0)) for v in at_1)
        if at_1[0] > 1e-4 or mass > 1 + 1e-4 or at_1[0] < -math.log(vocab):
            return "logits"
        if max(abs(a - b) for a, b in zip(at_1, at_half, strict=True)) > 1e-3:
            return "processed_logprobs"
        return "raw_logprobs"

    def _check_route(self, sync: str) -> None:
        if sync == "transfer":
            from lmdistill.training.samplers.weight_transfer import TransferRoutes

            return TransferRoutes(self).check()
        if sync == "lora":
            path, need = (
                "/load_lora_adapter",
                "start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora",
            )
            response = self._http.post(self.base + path, json={})
        else:
            path, need = "/collective_rpc", "start it with VLLM_SERVER_DEV_MODE=1"
            response = self._http.post(self.root + path, json=[])
        if response.status_code == 404:
            raise UserError(
                f"{self.where} has no {path} route, which vllm_sampler.sync={sync} needs to send it the student's "
                f"weights: {need}"
            )

    # -- sampling

    def sample(
        self, prompts: list[list[int]], seeds: list[int], s: SamplingSettings, *, model: str | None = None
    ) -> list[SampledRow]:
        """One completion per prompt (same order); each request seeded by its entry of `seeds`; `model`: the
        name requests use (a LoRA adapter's), by default the served model."""

        def one(args) -> SampledRow:
            prompt, seed = args
            body = {
                "model": model or self.model,
                "prompt": prompt,
                "max_tokens": s.max_new_tokens,
                "temperature": s.temperature,
                "top_p": s.top_p,
                "top_k": -1,
                "min_p": 0.0,
                "repetition_penalty": 1.0,
                "frequency_penalty": 0.0,
                "presence_penalty": 0.0,
                "stop_token_ids": list(s.stop_ids),
                "logprobs": 0,
                "return_token_ids": True,
                "seed": seed,
            }
            choice = self._post("/completions", body, "sampling").json()["choices"][0]
            ids, lps = choice.get("token_ids"), (choice.get("logprobs") or {}).get("token_logprobs")
            if ids is None or lps is None or len(ids) != len(lps):
                raise UserError(
                    f"{self.where}: the completion carries no token_ids with one log-prob each (vLLM >= 0.10 has "
                    "return_token_ids)"
                )
            return SampledRow([int(i) for i in ids], [float(v) for v in lps])

        with ThreadPoolExecutor(max_workers=min(MAX_IN_FLIGHT, max(len(prompts), 1))) as pool:
            return list(pool.map(one, zip(prompts, seeds, strict=True)))

    # -- weight sync

    def load_adapter(self, name: str, folder: str) -> None:
        self._post(
            "/load_lora_adapter", {"lora_name": name, "lora_path": folder}, f"loading adapter {folder}"
        )

    def unload_adapter(self, name: str) -> None:
        self._post("/unload_lora_adapter", {"lora_name": name}, f"unloading adapter {name}")

    def reload_weights(self, folder: str) -> None:
        """The workers load every weight from `folder` (safetensors) in place; then the prefix cache, whose
        KV blocks the old weights computed, is emptied."""
        body = {"method": "reload_weights", "kwargs": {"weights_path": folder}}
        self._post("/collective_rpc", body, f"reload_weights from {folder}")
        self._post("/reset_prefix_cache", None, "reset_prefix_cache")

    def close(self) -> None:
        self._http.close()
