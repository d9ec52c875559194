"""The four black-box data generators. Each turns input rows into (kept, rejected) output rows.

Every output row carries `provenance`: the teacher, the sampling parameters, the finish reason, the
request hash (the cache key) and the filter verdict ("kept" or the reason it was dropped). Rows
are in the `messages` layout that `lmdistill train` reads.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

from lmdistill.errors import UserError
from lmdistill.generate.config import GenerateConfig
from lmdistill.teachers.types import Request, Response, Sampling
from lmdistill.text import extract_answer, majority, normalize_answer, parse_json_object, rouge_l

Ask = Callable[[Sequence[Request], str], list[Response]]


def base_sampling(cfg: GenerateConfig) -> Sampling:
    """The `sampling` section of a generate (or recipe) config as a `Sampling`."""
    s = cfg.sampling
    return Sampling(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        seed=s.seed,
        stop=tuple(s.stop),
        top_logprobs=s.top_logprobs,
    )


def _provenance(teacher, request: Request, response: Response, verdict: str) -> dict:
    return {
        "teacher": f"{teacher.backend}:{teacher.name}",
        "sampling": asdict(request.sampling),
        "finish_reason": response.finish_reason,
        "request_hash": teacher.key(request),
        "filter": verdict,
        "usage": {"prompt_tokens": response.prompt_tokens, "completion_tokens": response.completion_tokens},
    }


def response_verdict(response: Response, keep_cut: bool, require_json: list[str] | None = None) -> str:
    """Why a raw answer is unusable, or "kept"."""
    if response.finish_reason == "error":
        return "failed"
    if not response.text.strip():
        return "empty"
    if response.finish_reason == "length" and not keep_cut:
        return "cut_at_length"
    if require_json is not None:
        obj = parse_json_object(response.text)
        if obj is None or any(k not in obj for k in require_json):
            return "invalid_json"
    return "kept"


def _field(row: dict, name: str, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise UserError(
            f"{where}: needs a non-empty string field {name!r} (has: {', '.join(row) or 'nothing'})"
        )
    return value


def _chat(row: dict, where: str) -> list[dict]:
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "user":
            raise UserError(f"{where}: 'messages' must be a list ending with a user message")
        return msgs
    chat = [{"role": "user", "content": _field(row, "prompt", where)}]
    if isinstance(row.get("system"), str):
        chat.insert(0, {"role": "system", "content": row["system"]})
    return chat


def responses(cfg: GenerateConfig, rows: list[dict], ask: Ask, teacher, source: str):
    """Mode 1: the teacher answers each prompt (sequence-level KD data)."""
    sampling = base_sampling(cfg)
    chats = [_chat(r, f"{source}:{i + 1}") for i, r in enumerate(rows)]
    requests = [Request.chat(c, sampling) for c in chats]
    kept, rejected = [], []
    for chat, req, resp in zip(chats, requests, ask(requests, "teacher answers"), strict=True):
        verdict = response_verdict(resp, cfg.keep_cut, cfg.require_json)
        row = {
            "messages": [*chat, {"role": "assistant", "content": resp.text}],
            "provenance": _provenance(teacher, req, resp, verdict),
        }
        if resp.error:
            row["error"] = resp.error
        (kept if verdict == "kept" else rejected).append(row)
    return kept, rejected


_ANSWER_LINE = re.compile(r"^\s*answer\s*(?:is)?\s*[:=]", re.IGNORECASE | re.MULTILINE)
_REASONING = re.compile(r"^\s*reasoning\s*:", re.IGNORECASE | re.MULTILINE)


def split_rationale(text: str) -> str:
    """The reasoning part of a "Reasoning: ... Answer: ..." reply (before the last "Answer:" line)."""
    answers = list(_ANSWER_LINE.finditer(text))
    body = text[: answers[-1].start()] if answers else text
    reasoning = _REASONING.search(body)
    if reasoning:
        body = body[reasoning.end() :]
    return body.strip()


def cot(cfg: GenerateConfig, rows: list[dict], ask: Ask, teacher, source: str):
    """Mode 2: N rationales per question; keep those whose answer matches gold or the majority vote."""
    c = cfg.cot
    base = base_sampling(cfg)
    questions = [_field(r, "question", f"{source}:{i + 1}") for i, r in enumerate(rows)]
    golds = [r.get("answer") for r in rows]
    prompts = [c.template.replace("{question}", q) for q in questions]
    requests = [
        Request.chat([{"role": "user", "content": p}], replace(base, seed=(base.seed or 0) + k))
        for p in prompts
        for k in range(c.samples)
    ]
    answers = ask(requests, "teacher rationales")
    kept, rejected = [], []
    for qi, (question, gold, prompt) in enumerate(zip(questions, golds, prompts, strict=True)):
        batch = list(range(qi * c.samples, (qi + 1) * c.samples))
        extracted = {j: extract_answer(answers[j].text, numeric=c.numeric) for j in batch}
        vote = majority(extracted[j] for j in batch if answers[j].finish_reason != "error")
        use_gold = gold is not None and c.keep in ("gold", "auto")
        target = normalize_answer(str(gold)) if use_gold else vote
        for j in batch:
            req, resp = requests[j], answers[j]
            verdict = response_verdict(resp, cfg.keep_cut)
            mine = normalize_answer(extracted[j])
            if verdict == "kept" and mine is None:
                verdict = "no_answer"
            elif verdict == "kept" and c.keep != "all" and mine != target:
                verdict = "wrong_answer" if use_gold else "not_majority"
            rationale = split_rationale(resp.text)
            row = {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": f"Reasoning: {rationale}\nAnswer: {extracted[j]}"},
                ],
                "question": question,
                "answer": str(gold) if gold is not None else vote,
                "rationale": rationale,
                "teacher_answer": extracted[j],
                "raw": resp.text,
                "provenance": _provenance(teacher, req, resp, verdict),
            }
            (kept if verdict == "kept" else rejected).append(row)
    return kept, rejected


def _instruction_verdict(text: str, pool: list[str], si) -> str:
    words = text.split()
    if not words:
        return "empty"
    if len(words) < si.min_words:
        return "too_short"
    if len(words) > si.max_words:
        return "too_long"
    lower = f" {text.lower()} "
    if any(f" {b.lower()} " in lower or f" {b.lower()}." in lower for b in si.blacklist):
        return "blacklisted"
    if rouge_l(text, _PROPOSAL_HEADER) >= si.rouge_threshold:
        return "echoes_prompt"
    if any(rouge_l(text, p) >= si.rouge_threshold for p in pool):
        return "near_duplicate"
    return "kept"


_PROPOSAL_HEADER = "Come up with a new, different task instruction. Here are examples:"


def _proposal_prompt(demos: list[dict]) -> str:
    """k demonstrations as "Task i: instruction" (+ "Input: ..." where the task has one), then an open slot."""
    lines = [_PROPOSAL_HEADER]
    for i, d in enumerate(demos):
        lines.append(f"Task {i + 1}: {d['instruction']}")
        if d.get("input"):
            lines.append(f"Input: {d['input']}")
    lines.append(f"Task {len(demos) + 1}:")
    return "\n".join(lines)


def _parse_task(text: str) -> tuple[str, str]:
    """The proposed (instruction, input): the first non-empty line without a "Task N:" label, and the
    text of an "Input:" line right after it ("" when there is none or it says there is none)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "", ""
    first = lines[0]
    if first.lower().startswith("task") and ":" in first[:10]:
        first = first.split(":", 1)[1].strip()
    task_input = ""
    if len(lines) > 1 and lines[1].lower().startswith("input:"):
        task_input = lines[1].split(":", 1)[1].strip()
        if task_input.strip("<>").lower() in ("noinput", "no input", "none", "n/a"):
            task_input = ""
    return first, task_input


def self_instruct(cfg: GenerateConfig, rows: list[dict], ask: Ask, teacher, source: str):
    """Mode 3: the teacher proposes new instructions (with inputs where the demonstrations have them)
    from k demonstrations, filters drop bad ones, then the teacher answers the survivors.
    Deterministic: round r draws its demonstrations with seed + r, so a rerun asks the same
    requests (and finds them in the cache)."""
    si = cfg.self_instruct
    pool = []
    for i, r in enumerate(rows):
        task = {"instruction": _field(r, "instruction", f"{source}:{i + 1}")}
        if isinstance(r.get("input"), str) and r["input"].strip():
            task["input"] = r["input"]
        pool.append(task)
    base = base_sampling(cfg)
    new, rejected = [], []
    rounds = 0
    while len(new) < si.num_instructions and rounds < si.max_requests:
        batch = min(si.num_instructions - len(new), si.max_requests - rounds)
        requests = []
        for r in range(rounds, rounds + batch):
            rng = random.Random((base.seed or 0) + r)
            demos = rng.sample(pool, min(si.demonstrations, len(pool)))
            # seed + r: each round is its own request (and its own sample when temperature > 0)
            sampling = replace(base, seed=(base.seed or 0) + r)
            requests.append(Request.chat([{"role": "user", "content": _proposal_prompt(demos)}], sampling))
        rounds += batch
        for req, resp in zip(requests, ask(requests, f"proposals (round to {rounds})"), strict=True):
            verdict = response_verdict(resp, keep_cut=True)
            instruction, task_input = _parse_task(resp.text)
            if verdict == "kept":
                verdict = _instruction_verdict(instruction, [t["instruction"] for t in pool], si)
            record = {"instruction": instruction, "input": task_input}
            record["provenance"] = _provenance(teacher, req, resp, verdict)
            if verdict == "kept" and len(new) < si.num_instructions:
                pool.append({"instruction": instruction, "input": task_input})
                new.append(record)
            elif verdict != "kept":
                rejected.append({**record, "stage": "instruction"})
    answer_rows = [{"prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")} for r in new]
    kept, answer_rejected = (
        responses(cfg, answer_rows, ask, teacher, "synthesized instructions") if new else ([], [])
    )
    by_prompt = {row["prompt"]: r for row, r in zip(answer_rows, new, strict=True)}
    for row in (*kept, *answer_rejected):
        task = by_prompt[row["messages"][-2]["content"]]
        row["instruction"], row["input"] = task["instruction"], task["input"]
    rejected += [{**r, "stage": "answer"} for r in answer_rejected]
    return kept, rejected


def icl(cfg: GenerateConfig, rows: list[dict], ask: Ask, teacher, source: str):
    """Mode 4: the teacher labels examples that later serve as k-shot demonstrations."""
    sampling = base_sampling(cfg)
    inputs = [_field(r, "input", f"{source}:{i + 1}") for i, r in enumerate(rows)]
    prompts = [
        (cfg.icl.instruction + "\n\n" if cfg.icl.instruction else "") + cfg.icl.template.replace("{input}", x)
        for x in inputs
    ]
    requests = [Request.chat([{"role": "user", "content": p}], sampling) for p in prompts]
    kept, rejected = [], []
    for row, x, prompt, req, resp in zip(
        rows, inputs, prompts, requests, ask(requests, "teacher labels"), strict=True
    ):
        verdict = response_verdict(resp, cfg.keep_cut, cfg.require_json)
        out = {
            "input": x,
            "output": resp.text.strip(),
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": resp.text.strip()},
            ],
            "provenance": _provenance(teacher, req, resp, verdict),
        }
        if "output" in row:
            out["gold"] = row["output"]
        (kept if verdict == "kept" else rejected).append(out)
    return kept, rejected


MODE_FUNCTIONS = {"responses": responses, "cot": cot, "self_instruct": self_instruct, "icl": icl}
