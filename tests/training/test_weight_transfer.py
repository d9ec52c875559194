"""vllm_sampler.sync=transfer (`training/samplers/weight_transfer.py`): the request sequence of a sync, against
a real HTTP server on 127.0.0.1 (`http.server` in a thread) that records what it receives and answers as
vLLM 0.32's RL routes do (`{"error": {"message": ...}}` with HTTP 500 on a worker error, 404 for a missing
route).

What stands in for NCCL: `RecordingChannel` (broadcast = keep a copy). The NCCL group and the broadcast
itself need CUDA and are not tested here; what vLLM's CPU build answers to these routes is tested in
tests/vllm/test_weight_transfer_server.py. The config's refusal on a CPU trainer:
tests/training/test_vllm_sampler_inputs.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import torch

from lmdistill.errors import UserError
from tests.conftest import make_tiny_llama


class VllmRoutes(BaseHTTPRequestHandler):
    """Records (path, query, body) per request; `fail` maps a path to (status, vLLM's error message)."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        url = urlsplit(self.path)
        self.server.seen.append((url.path, url.query, body))
        status, message = self.server.fail.get(url.path, (200, None))
        payload = {"error": {"message": message, "code": status}} if message else {"message": "ok"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def routes():
    server = ThreadingHTTPServer(("127.0.0.1", 0), VllmRoutes)
    server.seen, server.fail = [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class RecordingChannel:
    """The trainer's end of the group, without NCCL: keeps what it would broadcast; `fail_at` raises there."""

    def __init__(self, fail_at: int | None = None):
        self.sent, self.waited, self.fail_at = [], 0, fail_at

    def broadcast(self, tensor: torch.Tensor) -> None:
        if len(self.sent) == self.fail_at:
            raise RuntimeError("NCCL error: unhandled system error")
        self.sent.append(tensor.clone())

    def wait(self, check) -> None:
        check()
        self.waited += 1


def _sync(routes, channel):
    from lmdistill.training.samplers.vllm_client import VllmClient
    from lmdistill.training.samplers.weight_transfer import TransferSync

    url = f"http://127.0.0.1:{routes.server_address[1]}/v1"
    return TransferSync(VllmClient(url, "student", 30), channel=channel)


def _paths(routes) -> list[str]:
    return [path for path, _, _ in routes.seen]


def test_a_sync_pauses_announces_broadcasts_in_that_order_and_resumes(routes):
    """pause (wait for in-flight requests, clear the prefix cache) -> start -> update (every state-dict
    name with its dtype and shape, the tied head as its own tensor) -> finish -> resume; the tensors go out
    in the announced order, shapes and dtypes as announced."""
    model = make_tiny_llama(64, tie=True)
    channel = RecordingChannel()
    _sync(routes, channel).push(model, step=3)
    assert _paths(routes) == [
        "/pause",
        "/start_weight_update",
        "/update_weights",
        "/finish_weight_update",
        "/resume",
    ]
    assert routes.seen[0][1] == "mode=wait&clear_cache=true"
    info = routes.seen[2][2]["update_info"]
    state = model.state_dict()
    assert info["names"] == list(state) and "lm_head.weight" in info["names"]
    assert info["dtype_names"] == ["float32"] * len(state)
    assert info["shapes"] == [list(v.shape) for v in state.values()]
    assert len(channel.sent) == len(state) and channel.waited == 1
    for tensor, (name, dtype, shape) in zip(
        channel.sent, zip(info["names"], info["dtype_names"], info["shapes"], strict=True), strict=True
    ):
        assert str(tensor.dtype) == f"torch.{dtype}" and list(tensor.shape) == shape
        assert torch.equal(tensor, state[name])
    head = channel.sent[info["names"].index("lm_head.weight")]
    assert torch.equal(head, model.get_input_embeddings().weight)  # tied: the head sent is the embedding


@pytest.mark.parametrize(
    "failing, message, expected",
    [
        (
            "/update_weights",
            "Call to collective_rpc method failed: Worker failed with error 'NCCL weight transfer not "
            "initialized. Call init_transfer_engine() first.', please check the stack trace above",
            ["/pause", "/start_weight_update", "/update_weights", "/resume"],
        ),
        (
            "/start_weight_update",
            "Call to collective_rpc method failed: Worker failed with error 'Weight transfer not configured. "
            "Please set weight_transfer_config to enable weight transfer.'",
            ["/pause", "/start_weight_update", "/resume"],
        ),
        ("/pause", "Failed to pause generation: boom", ["/pause", "/resume"]),
    ],
)
def test_a_refused_step_is_one_line_and_the_server_is_resumed(routes, failing, message, expected):
    routes.fail[failing] = (500, message)
    channel = RecordingChannel()
    with pytest.raises(UserError) as e:
        _sync(routes, channel).push(make_tiny_llama(64), step=1)
    text = str(e.value)
    assert "\n" not in text and f"{failing} failed: HTTP 500" in text, text
    if failing == "/start_weight_update":
        assert "the server was started without --weight-transfer-config" in text
    assert _paths(routes)[: len(expected) - 1] == expected[:-1] and _paths(routes)[-1] == "/resume"
    assert "/finish_weight_update" not in _paths(routes)


def test_a_failed_broadcast_is_one_line_and_the_server_is_resumed(routes):
    channel = RecordingChannel(fail_at=2)
    with pytest.raises(UserError, match=r"^broadcasting the weights failed: RuntimeError: NCCL error"):
        _sync(routes, channel).push(make_tiny_llama(64), step=1)
    paths = _paths(
        routes
    )  # /update_weights runs beside the broadcasts: it may arrive before or after /resume
    assert paths[:2] == ["/pause", "/start_weight_update"] and "/resume" in paths
    assert "/finish_weight_update" not in paths and len(channel.sent) == 2


def test_a_missing_route_names_dev_mode_and_the_flag(routes):
    routes.fail["/pause"] = (404, "Not Found")
    with pytest.raises(
        UserError, match=r"has no /pause route.*VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config"
    ):
        _sync(routes, RecordingChannel()).push(make_tiny_llama(64), step=1)


def test_a_failed_sync_stops_the_sampler_with_the_transfer_hint(routes):
    """Through `VllmSampler`: the step, the server's answer, and what to do (restart, resume)."""
    from lmdistill.training.samplers import SampleRequest
    from lmdistill.training.samplers.vllm import VllmSampler

    routes.fail["/update_weights"] = (500, "Worker failed with error 'boom'")
    sampler = VllmSampler(
        _sync(routes, None).client, sync="transfer", sync_dir=".", sync_every=1, check_atol=0.02
    )
    sampler.sync.channel = RecordingChannel()
    request = SampleRequest([[1, 2]], step=4, seed=0, eos=frozenset({2}), pad_id=0, max_new_tokens=2)
    with pytest.raises(
        UserError, match=r"on_policy step 4: sending .* failed \(.*/update_weights failed: HTTP 500"
    ) as e:
        sampler.sample(make_tiny_llama(64), request)
    assert "restart the student's vLLM server and resume" in str(e.value)
    assert _paths(routes)[-1] == "/resume"


def test_without_vllm_here_opening_the_group_is_one_line(routes):
    """The trainer side of the group is vLLM's own helper; where vLLM does not import (this venv), opening
    it says so before any request."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM imports here: the trainer-side helper is there")
    sync = _sync(routes, None)
    with pytest.raises(
        UserError, match=r"sync=transfer opens its NCCL group with vLLM's trainer-side helper"
    ):
        sync.open("127.0.0.1")
    assert routes.seen == []
