"""on_policy.sampler=vllm: bad settings and bad servers are one line (exit 2) before any model loads; a
sync that fails mid-run stops the run naming the step. The servers here are small fakes that answer
like vLLM 0.32 where it matters (routes, /v1/models, prompt_logprobs) and misbehave on purpose where a
real vLLM would need contrived setups: a reload that answers 500 mid-run, a tied served folder reached
through `lmdistill train` (another real server on the tied folder). None of them samples. Everything a
working server does (syncs, samples, the check, `torchrun`, resume) and the other refusals (sync route,
model name, vocabulary, log-prob mode) run against real vLLM servers in tests/vllm/."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.conftest import cli_fails

ROW = {"messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi."}]}


class FakeVllm:
    """/v1/models lists `name` (root `root`); /v1/completions answers the vocabulary probe with
    `tokenizer`'s texts and the log-prob mode probe with fixed raw log-probs; no /server_info; both sync
    routes (400 on a bad body, as vLLM); `reload_status` is what a reload_weights call gets."""

    def __init__(
        self,
        tokenizer,
        *,
        name="student",
        root=None,
        reload_status=200,
    ):
        self.tokenizer, self.name, self.root = tokenizer, name, root
        self.reload_status = reload_status
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body=None):
                data = json.dumps(body or {}).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._send(200, {"data": [{"id": fake.name, "root": fake.root, "parent": None}]})
                self._send(404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])) or b"null")
                if self.path == "/v1/completions":
                    return self._send(200, fake.completion(body))
                if self.path == "/v1/load_lora_adapter":
                    return self._send(400 if not body else 200)
                if self.path == "/collective_rpc":
                    return self._send(400 if not isinstance(body, dict) else fake.reload_status)
                if self.path == "/reset_prefix_cache":
                    return self._send(200, {"success": True})
                self._send(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def completion(self, body):
        if body.get("logprobs"):  # the log-prob mode probe: raw log-probs, the same at any temperature
            tops = {"a": -0.5, "b": -1.5, "c": -2.5, "d": -3.5, "e": -4.5}
            return {"choices": [{"index": 0, "token_ids": [5], "logprobs": {"top_logprobs": [tops]}}]}
        ids = body["prompt"]
        entries = [None] + [
            {str(i): {"logprob": -1.0, "rank": 1, "decoded_token": self.tokenizer.decode([i])}}
            for i in ids[1:]
        ]
        return {"choices": [{"index": 0, "text": "", "token_ids": [], "prompt_logprobs": entries}]}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_model_loads(monkeypatch):
    import lmdistill.training.parts.models as train_models

    monkeypatch.setattr(train_models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(train_models, "load_teacher", lambda *a, **k: pytest.fail("loaded the teacher"))


def _yaml(tmp_path, tiny_model_dirs, *, student=None, on_policy=None, vllm_sampler=None, **train) -> str:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    cfg = {
        "teacher": {"name": str(tiny_model_dirs[0])},
        "student": {"name": str(tiny_model_dirs[1]), **(student or {})},
        "data": {"train": str(data), "max_length": 48},
        "on_policy": {"lmbda": 1.0, "max_new_tokens": 8, "sampler": "vllm", **(on_policy or {})},
        "vllm_sampler": vllm_sampler or {},
        "train": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 1,
            "per_device_train_batch_size": 1,
            "extra": {"use_cpu": True, "disable_tqdm": True},
            **train,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "on_policy.sampler=vllm needs vllm_sampler.url"),
        ({"on_policy": {"sampler": "sglang"}}, "on_policy.sampler: unknown sampler 'sglang'"),
        ({"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync": "lora"}}, "needs a LoRA student"),
        (
            {"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync": "reload"}, "student": {"lora_r": 4}},
            "sync=reload with a LoRA student",
        ),
        (
            {"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync": "nccl"}},
            "vllm_sampler.sync: unknown sync",
        ),
        (
            {"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync_every": 0}},
            "sync_every must be at least 1",
        ),
        ({"vllm_sampler": {"url": "http://127.0.0.1:9/v1", "check_atol": 0}}, "check_atol must be a finite"),
        (
            {
                "vllm_sampler": {"url": "http://127.0.0.1:9/v1", "sync_every": 2},
                "on_policy": {"estimator": "sampled"},
            },
            "sync_every=2 with on_policy.estimator=sampled",
        ),
    ],
)
def test_bad_settings_are_one_line(tmp_path, tiny_model_dirs, capsys, no_model_loads, settings, message):
    cli_fails(["train", _yaml(tmp_path, tiny_model_dirs, **settings)], capsys, message)


def test_an_unreachable_server_is_one_line_before_any_model_loads(
    tmp_path, tiny_model_dirs, capsys, no_model_loads
):
    from tests.vllm.vllmserver import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    path = _yaml(tmp_path, tiny_model_dirs, vllm_sampler={"url": url, "timeout": 5})
    cli_fails(["train", path], capsys, f"vllm_sampler.url {url} is not reachable", "start the student's vLLM")


def test_a_tied_served_folder_is_one_line_before_any_model_loads(
    tmp_path, tiny_model_dirs, tiny_tokenizer, capsys, no_model_loads
):
    root = tmp_path / "served"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    fake = FakeVllm(tiny_tokenizer, root=str(root))
    try:
        path = _yaml(tmp_path, tiny_model_dirs, vllm_sampler={"url": fake.url})
        cli_fails(
            ["train", path],
            capsys,
            "ties the LM head to the embedding",
            "lmdistill export",
            "--untie-embeddings",
        )
    finally:
        fake.close()


def test_a_reload_that_fails_mid_run_names_the_step(tmp_path, tiny_model_dirs, tiny_tokenizer, capsys):
    fake = FakeVllm(tiny_tokenizer, reload_status=500)
    try:
        path = _yaml(tmp_path, tiny_model_dirs, vllm_sampler={"url": fake.url})
        cli_fails(
            ["train", path],
            capsys,
            "on_policy step 0: sending the student's weights to the vLLM server failed",
            "HTTP 500",
            "resume",
        )
    finally:
        fake.close()
