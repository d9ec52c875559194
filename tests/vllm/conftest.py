"""Session fixtures: real vLLM servers (the CPU build in .venv-vllm) serving the embedded teacher,
SmolLM2-135M-Instruct, converted by lmdistill to a safetensors folder. Both start when the first test that
needs one does (they start at once, side by side, which is faster than one after the other) and stop
when the session ends:

- `vllm_teacher`: `--max-logprobs 20` (vLLM's default cap), log-probs mode raw_logprobs (the default);
- `vllm_logits`: the same model with `--logprobs-mode raw_logits` (what the probe must refuse).

Each yields the `VllmServer` (url, name, ready_after seconds). No .venv-vllm: the tests fail, naming
the make target; they are never skipped.
"""

from __future__ import annotations

import pytest

from tests.vllm.vllmserver import VllmServer, vllm_python

MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def smollm2_dir():
    from lmdistill.models.embedded import ensure_embedded

    return ensure_embedded(MODEL, progress=lambda _: None)


@pytest.fixture(scope="session")
def _vllm_servers(smollm2_dir, tmp_path_factory):
    vllm_python()  # fails (never skips) with the build command when .venv-vllm is missing
    logs = tmp_path_factory.mktemp("vllm_logs")
    servers = {
        "teacher": VllmServer(smollm2_dir, MODEL, logs / "teacher.log", args=("--max-logprobs", "20")),
        "logits": VllmServer(
            smollm2_dir,
            MODEL,
            logs / "logits.log",
            args=("--max-logprobs", "20", "--logprobs-mode", "raw_logits"),
            kv_gib=1,
            max_model_len=512,
        ),
    }
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def vllm_teacher(_vllm_servers) -> VllmServer:
    return _vllm_servers["teacher"].wait()


@pytest.fixture(scope="session")
def vllm_logits(_vllm_servers) -> VllmServer:
    return _vllm_servers["logits"].wait()


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A 2-layer student for the sampler tests: (its folder, the untied copy a server serves): the embedded
    SmolLM2-135M-Instruct shrunk to 2 layers (tied head), and `lmdistill export --untie-embeddings` of it
    (vLLM 0.32's in-place reload keeps a tied head's old weights)."""
    from lmdistill.models import load_teacher, load_tokenizer, shrink_model
    from lmdistill.training.samplers.weight_sync import write_server_folder

    root = tmp_path_factory.mktemp("vllm_student")
    folder = root / "student"
    shrink_model(load_teacher(MODEL), num_layers=2).save_pretrained(folder)
    load_tokenizer(MODEL).save_pretrained(folder)
    return folder, write_server_folder(folder, root / "served")
