"""Chat generation from a local Hugging Face causal LM: batched, with the KV cache.

Requests with identical sampling settings are batched (left padding, the chat template with the
generation prompt), longest prompts first so a batch wastes little padding. Greedy decoding is
deterministic; sampled decoding seeds torch with the request's seed before each batch, so a sample
is reproducible for the same batch composition.

`ChatGenerator` is the neutral part: `lmdistill eval` and the recipes generate from students with it,
and `lmdistill.teachers.local.LocalTeacher` (the black-box teacher: a name, a cache identity) is
built on it. Requests and responses are the shapes every teacher backend speaks
(`lmdistill.teachers.types`, plain dataclasses with no dependencies).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch

from lmdistill.models.embedded import require_chat_template
from lmdistill.teachers.types import Request, Response, Sampling, collect


class ChatGenerator:
    """Chat requests in, responses out, from a loaded model and tokenizer.

    Args:
        model: a causal LM (put it on its device first); used in eval mode under no_grad.
        tokenizer: its tokenizer, with a chat template.
        batch_size: requests per generate call.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8):
        require_chat_template(tokenizer, "chat requests")  # a base model (gemma3-270m) stops here
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def prompt_text(self, request: Request) -> str:
        """The request's messages rendered by the chat template, ending with the generation prompt."""
        return self.tokenizer.apply_chat_template(
            request.message_dicts, tokenize=False, add_generation_prompt=True
        )

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        """One response per request, in request order."""
        return collect(self.generate_iter(requests), len(requests))

    def generate_iter(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response]]:
        """(index into `requests`, response) pairs, a batch at a time, in no promised order."""
        groups: dict[Sampling, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[r.sampling].append(i)
        for sampling, indices in groups.items():
            texts = {i: self.prompt_text(requests[i]) for i in indices}
            order = sorted(indices, key=lambda i: -len(texts[i]))
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                yield from zip(batch, self._generate_batch([texts[i] for i in batch], sampling), strict=True)

    @torch.no_grad()
    def _generate_batch(self, texts: list[str], s: Sampling) -> list[Response]:
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        enc = enc.to(device)
        kwargs = generate_kwargs(tok, s)  # seeds torch for a seeded sampled request
        out = self.model.generate(**enc, **kwargs)
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        logits = torch.stack(out.logits, dim=1) if s.top_logprobs > 0 else None  # [B, T, V]
        return [
            self.response(new[b], prompt_lens[b], s, None if logits is None else logits[b])
            for b in range(new.shape[0])
        ]

    def response(self, ids: torch.Tensor, prompt_len: int, s: Sampling, logits) -> Response:
        """The `Response` for one row's new token ids [T] (and its logits [T, V] when log-probs are asked)."""
        tok = self.tokenizer
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = {tok.eos_token_id, *([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))}
        ids = ids.tolist()
        pad = tok.pad_token_id
        while ids and pad is not None and pad not in eos and ids[-1] == pad:
            ids.pop()  # rows that stopped on a stop string are padded to the batch's length
        length = len(ids)
        finish = "length"
        for t, tid in enumerate(ids):
            if tid in eos:
                length, finish = t + 1, "stop"
                break
        text = tok.decode(ids[:length], skip_special_tokens=True)
        for stop in s.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        logprobs = None
        if logits is not None:
            logprobs = _top_logprobs(tok, ids[:length], logits[:length], s.top_logprobs)
        return Response(
            text=text.strip() if finish != "length" else text,
            finish_reason=finish,
            prompt_tokens=int(prompt_len),
            completion_tokens=length,
            logprobs=logprobs,
        )


def _top_logprobs(tok, ids: list[int], logits: torch.Tensor, k: int) -> list[dict]:
    """Per generated token: its log-prob under the model (T = 1) and the k most likely alternatives."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [T, V]
    top = logp.topk(k, dim=-1)
    return [
        {
            "token": tok.decode([tid]),
            "logprob": logp[t, tid].item(),
            "top": [
                {"token": tok.decode([j]), "logprob": v}
                for j, v in zip(top.indices[t].tolist(), top.values[t].tolist(), strict=True)
            ],
        }
        for t, tid in enumerate(ids)
    ]


def generate_kwargs(tokenizer, s: Sampling) -> dict:
    """`model.generate` keyword arguments for `s`: greedy or sampled (temperature, top_p), stop strings,
    logits kept when log-probs are asked. A seeded sampled request seeds torch's global generator here,
    just before its batch is generated."""
    tok = tokenizer
    kwargs = dict(
        max_new_tokens=s.max_new_tokens,
        do_sample=not s.greedy,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        return_dict_in_generate=True,
        output_logits=s.top_logprobs > 0,
    )
    if not s.greedy:
        kwargs.update(temperature=s.temperature, top_p=s.top_p)
        if s.seed is not None:
            torch.manual_seed(s.seed)
    else:  # silence generation_config sampling defaults that do not apply to greedy decoding
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if s.stop:
        kwargs.update(stop_strings=list(s.stop), tokenizer=tok)
    return kwargs
