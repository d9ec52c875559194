"""`lmdistill generate` configuration: one dataclass per concern, each field documented once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lmdistill import yamlconfig
from lmdistill.errors import UserError
from lmdistill.yamlconfig import setting

MODES = ("responses", "cot", "self_instruct", "icl")


#: The teacher's keys that say how it is reached, not what it is asked: an output written with other
#: values of these is the same job, so a rerun may change them and still resume from the cache.
TEACHER_CLIENT_KEYS = (
    "teacher.api_key_env",
    "teacher.concurrency",
    "teacher.requests_per_minute",
    "teacher.tokens_per_minute",
    "teacher.max_retries",
    "teacher.timeout",
    "teacher.batch_size",
)


@dataclass
class TeacherBackendConfig:
    backend: str = setting(
        "local", "local (a Hugging Face model run here) or api (an OpenAI-compatible endpoint)."
    )
    name: str = setting(
        "smollm2-135m", "local: HF id, folder or short name; api: the model name the endpoint serves."
    )
    base_url: str | None = setting(
        None, "api: the endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, lmdistill serve)."
    )
    api_key_env: str | None = setting(
        "OPENAI_API_KEY",
        "api: NAME of the environment variable holding the key (the key itself never goes in a file).",
    )
    concurrency: int = setting(8, "api: requests in flight at most.")
    requests_per_minute: float | None = setting(None, "api: request rate limit.")
    tokens_per_minute: float | None = setting(None, "api: token rate limit (prompt + completion).")
    max_retries: int = setting(
        5, "api: retries on 408/409/429/5xx/timeouts (Retry-After honoured); other 4xx fail at once."
    )
    timeout: float = setting(60.0, "api: seconds per request.")
    batch_size: int = setting(16, "local: prompts per generate call.")
    dtype: str = setting("float32", "local: weights dtype.")


@dataclass
class SamplingConfig:
    max_new_tokens: int = setting(
        128, "Tokens per answer at most; answers cut there are tagged `cut_at_length`."
    )
    temperature: float = setting(0.0, "0 is greedy decoding.")
    top_p: float = setting(1.0, "Nucleus sampling mass.")
    seed: int | None = setting(0, "Sampling seed; sample i of a prompt uses seed + i.")
    stop: list[str] = setting([], "Stop strings.")
    top_logprobs: int = setting(0, "Also record the top-k log-probs of each generated token.")


@dataclass
class CoTConfig:
    samples: int = setting(4, "Rationales sampled per question (use temperature > 0 for different ones).")
    template: str = setting(
        "{question}\nThink step by step, then give the final answer.\nReply exactly as:\n"
        "Reasoning: <your reasoning>\nAnswer: <the answer>",
        "The prompt; {question} is replaced.",
    )
    numeric: bool = setting(
        False, "Answers are numbers (compare them as numbers; take the last number if no 'Answer:')."
    )
    keep: str = setting(
        "auto",
        "Which rationales to keep: gold (answer matches the row's gold answer), majority (matches the "
        "self-consistency vote), auto (gold where the row has one, else majority), all.",
    )


@dataclass
class SelfInstructConfig:
    num_instructions: int = setting(20, "New instructions to collect.")
    demonstrations: int = setting(3, "Seed/pool tasks shown per request.")
    max_requests: int = setting(200, "Stop after this many proposal requests even if fewer were collected.")
    min_words: int = setting(3, "Drop instructions shorter than this.")
    max_words: int = setting(150, "Drop instructions longer than this.")
    blacklist: list[str] = setting(
        [
            "image",
            "images",
            "graph",
            "graphs",
            "picture",
            "pictures",
            "file",
            "files",
            "map",
            "maps",
            "draw",
            "plot",
            "go to",
            "video",
            "audio",
            "music",
            "flowchart",
            "diagram",
        ],
        "Drop instructions mentioning these (tasks a text model cannot do).",
    )
    rouge_threshold: float = setting(0.7, "Drop an instruction whose ROUGE-L with any pooled one is >= this.")


@dataclass
class ICLConfig:
    instruction: str = setting("", "The task instruction shown to the teacher with each example.")
    template: str = setting("{input}", "How an example is shown; {input} is replaced.")


@dataclass
class GenerateConfig:
    mode: str = setting("responses", "responses, cot, self_instruct or icl.")
    input: str = setting(
        "",
        "JSONL input: prompts/messages (responses), question[/answer] (cot), seed tasks (self_instruct), input[/output] (icl).",
    )
    output: str = setting(
        "",
        "JSONL written here (messages format, with provenance); dropped rows go to <output>.rejected.jsonl.",
    )
    cache: str | None = setting(
        None, "SQLite response cache; default <output>.cache.sqlite. A rerun sends only missing requests."
    )
    overwrite: bool = setting(
        False,
        "Replace an output written by a different job (other settings, recorded in <output>.config.yaml); "
        "without it that output is refused. A rerun of the same job needs no overwrite: it resumes.",
    )
    keep_cut: bool = setting(False, "Keep answers cut at max_new_tokens in the training file.")
    require_json: list[str] | None = setting(
        None,
        "Answers must be a JSON object holding these keys ([] = any object); others are dropped as invalid_json.",
    )
    max_rows: int | None = setting(None, "Use at most this many input rows.")
    teacher: TeacherBackendConfig = field(default_factory=TeacherBackendConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    cot: CoTConfig = field(default_factory=CoTConfig)
    self_instruct: SelfInstructConfig = field(default_factory=SelfInstructConfig)
    icl: ICLConfig = field(default_factory=ICLConfig)

    def validate(self) -> GenerateConfig:
        if self.mode not in MODES:
            raise UserError(f"mode: unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not self.input:
            raise UserError("input: give the JSONL file to read")
        if not self.output:
            raise UserError("output: give the JSONL file to write")
        if self.teacher.backend not in ("local", "api"):
            raise UserError(f"teacher.backend: choose local or api, got {self.teacher.backend!r}")
        if self.teacher.backend == "api" and not self.teacher.base_url:
            raise UserError("teacher.base_url: the api backend needs the endpoint URL")
        if self.teacher.backend == "api":
            from lmdistill.teachers.api import check_base_url

            check_base_url(self.teacher.base_url)  # no credentials in the URL (before anything is written)
        if self.cot.keep not in ("gold", "majority", "auto", "all"):
            raise UserError(f"cot.keep: choose gold, majority, auto or all, got {self.cot.keep!r}")
        if self.cot.samples < 1 or self.self_instruct.demonstrations < 1:
            raise UserError("cot.samples and self_instruct.demonstrations must be at least 1")
        if self.sampling.max_new_tokens < 1:
            raise UserError("sampling.max_new_tokens must be at least 1")
        if not 0.0 < self.sampling.top_p <= 1.0:
            raise UserError(f"sampling.top_p must be in (0, 1], got {self.sampling.top_p}")
        if self.sampling.temperature < 0:
            raise UserError(f"sampling.temperature must be >= 0, got {self.sampling.temperature}")
        if self.mode == "cot" and self.cot.samples > 1 and self.sampling.temperature == 0:
            raise UserError(
                f"cot.samples={self.cot.samples} with greedy decoding (sampling.temperature 0) asks the same "
                "question the same way several times; set sampling.temperature > 0 (e.g. 0.7) or cot.samples=1"
            )
        if self.teacher.batch_size < 1 or self.teacher.concurrency < 1:
            raise UserError("teacher.batch_size and teacher.concurrency must be at least 1")
        if self.max_rows is not None and self.max_rows < 1:
            raise UserError(f"max_rows must be at least 1, got {self.max_rows}")
        return self

    @property
    def cache_path(self) -> str:
        return self.cache or f"{self.output}.cache.sqlite"


def load_generate_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> GenerateConfig:
    return yamlconfig.load(GenerateConfig, path, overrides).validate()
