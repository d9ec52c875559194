"""`vllm_sampler.sync: transfer`: full students sent to their vLLM server over NCCL, through vLLM's RL
weight-transfer API, without a folder. GPU only. The NCCL group and the broadcast are NOT TESTED HERE (no
GPU); the HTTP sequencing is (tests/training/test_weight_transfer.py, a real HTTP server on loopback), and so
is what vLLM's CPU build answers (tests/vllm/test_weight_transfer_server.py).

The API as vLLM 0.32 has it (read in its source; the routes sit at the server's root, not under /v1, and
exist only with VLLM_SERVER_DEV_MODE=1: vllm/entrypoints/launchers/api_server/routers.py registers
vllm/entrypoints/rl/online/api_router.py then):
- `GET /get_world_size` -> `{"world_size": N}`: the workers (TP x PP x DP) that join the NCCL group;
- `POST /init_weight_transfer_engine {"init_info": {...}}`: the workers join the group, fields of
  `NCCLWeightTransferInitInfo` (vllm/distributed/weight_transfer/nccl_common.py): master_address and
  master_port (a TCP store the trainer hosts, as NCCL rank 0), rank_offset 1, world_size 1 + N, packed.
  The server must be started with `--weight-transfer-config '{"backend": "nccl"}'`; without it the workers
  answer "Weight transfer not configured" (HTTP 500, vllm/v1/worker/gpu_worker.py);
- per sync: `POST /pause?mode=wait&clear_cache=true` (in-flight requests finish, new ones wait, the
  prefix cache is emptied: its blocks were computed by the old weights); `POST /start_weight_update`;
  `POST /update_weights {"update_info": {"names", "dtype_names", "shapes"}}` (`NCCLWeightTransferUpdateInfo`,
  vllm/distributed/weight_transfer/nccl_engine.py), which returns once the workers received every tensor,
  so it runs beside the trainer's broadcasts; `POST /finish_weight_update`; `POST /resume`.

The trainer side is vLLM's own: `nccl_common.trainer_init` (a `StatelessProcessGroup` and a
`PyNcclCommunicator` at rank 0), so vLLM must be importable where the trainer runs. Tensors go one at a
time in the announced order (`packed: false`), as the workers' unpacked receive loop reads them
(`NCCLWeightTransferEngine.receive_weights`). vLLM's `NCCLTrainerWeightTransferEngine` does the same round
trip without pause/resume, and waits forever in NCCL when the server refused the update; here the
broadcast's completion is polled beside the update request, so a refusal is one error.

Tied embeddings: the workers load what arrives through the same layerwise reload as `reload_weights`
(vllm/model_executor/model_loader/reload/layerwise.py), which puts a tied LM head's old tensor back, so the
server serves an untied copy and `lm_head.weight` is sent as its own tensor (`weight_sync` says more).

A failure after `/start_weight_update` leaves the workers without weights (tried on the CPU build: the next
request killed its engine, EngineDeadError), as a failed full reload does: restart the server, resume.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmdistill.errors import UserError
from lmdistill.models.forward import unwrap
from lmdistill.training.samplers.vllm_client import VllmClient

FLAG = '--weight-transfer-config \'{"backend": "nccl"}\''
#: vLLM's answers that name a server-side cause, and what to tell the user instead
KNOWN = {
    "Weight transfer not configured": f"the server was started without {FLAG}",
    "Cannot access accelerator device": (
        "its workers have no GPU (vLLM's CPU build cannot join an NCCL group); sync=transfer needs vLLM on "
        "GPUs, use sync=reload on CPU"
    ),
}


def _answer(response) -> str:
    """vLLM's error message (`{"error": {"message": ...}}`) on one line, explained where it is known."""
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text
    message = " ".join(message.split())[:300]
    why = next((v for k, v in KNOWN.items() if k in message), None)
    return f"{message} ({why})" if why else message


class TransferRoutes:
    """The RL routes of the server `client` talks to; each failure one UserError line."""

    def __init__(self, client: VllmClient):
        self.client, self.where = client, client.where

    def call(self, method: str, path: str, what: str, *, body=None, params=None) -> dict:
        c = self.client
        try:
            # a new connection each: vLLM's server drops one after a route raised (HTTP 500)
            response = c._http.request(
                method, c.root + path, json=body, params=params, headers={"Connection": "close"}
            )
        except c._errors as e:
            raise UserError(f"{self.where}: {what} failed: {type(e).__name__}: {e}") from None
        if response.status_code == 404:
            raise self._no_route(path)
        if response.status_code != 200:
            raise UserError(f"{self.where}: {what} failed: HTTP {response.status_code}: {_answer(response)}")
        try:
            return response.json()
        except ValueError:
            return {}

    def _no_route(self, path: str) -> UserError:
        return UserError(
            f"{self.where} has no {path} route, which vllm_sampler.sync=transfer needs: start it with "
            f"VLLM_SERVER_DEV_MODE=1 and {FLAG}"
        )

    def check(self) -> None:
        """At connect, changing nothing: the routes are there (an empty init body is refused as invalid,
        HTTP 400, where the route exists) and the server has an nccl weight-transfer engine (its dev-mode
        /server_info, `vllm_config.weight_transfer_config`)."""
        c = self.client
        try:
            probe = c._http.post(c.root + "/init_weight_transfer_engine", json={})
        except c._errors as e:
            raise UserError(
                f"{self.where}: the weight-transfer probe failed: {type(e).__name__}: {e}"
            ) from None
        if probe.status_code == 404:
            raise self._no_route("/init_weight_transfer_engine")
        config = self.call("GET", "/server_info", "/server_info", params={"config_format": "json"})
        engine = (config.get("vllm_config") or {}).get("weight_transfer_config")
        backend = engine.get("backend") if isinstance(engine, dict) else None
        if backend != "nccl":
            got = f"backend {backend!r}" if engine else "none"
            raise UserError(
                f"{self.where} has no nccl weight-transfer engine ({got}), which vllm_sampler.sync=transfer needs: "
                f"start it with {FLAG}"
            )

    def workers(self) -> int:
        return int(self.call("GET", "/get_world_size", "/get_world_size")["world_size"])

    def init_engine(self, init_info: dict) -> None:
        self.call(
            "POST", "/init_weight_transfer_engine", "joining the NCCL group", body={"init_info": init_info}
        )

    def pause(self) -> None:
        self.call("POST", "/pause", "/pause", params={"mode": "wait", "clear_cache": "true"})

    def resume(self) -> None:
        self.call("POST", "/resume", "/resume")

    def start(self) -> None:
        self.call("POST", "/start_weight_update", "/start_weight_update")

    def update(self, update_info: dict) -> None:
        self.call("POST", "/update_weights", "/update_weights", body={"update_info": update_info})

    def finish(self) -> None:
        self.call("POST", "/finish_weight_update", "/finish_weight_update")


class Background:
    """`fn(*args)` in a daemon thread (one stuck in NCCL or in a request never holds up the exit)."""

    def __init__(self, what: str, fn: Callable, *args):
        self.what, self._result, self._error = what, None, None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._result = fn(*args)
        except BaseException as e:  # handed to whoever asks for the result
            self._error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def raise_if_failed(self) -> None:
        if self.done() and self._error is not None:
            raise self._error

    def result(self, timeout: float):
        self._thread.join(timeout)
        if not self.done():
            raise UserError(f"{self.what}: no answer within {timeout:g} s")
        self.raise_if_failed()
        return self._result


def untied_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) for every entry of the state dict, as `weight_sync.write_untied` writes them: a tied
    head appears as `lm_head.weight` beside the embedding (state_dict keeps both names)."""
    return [(k, v.detach()) for k, v in unwrap(model).state_dict().items()]


def update_info(tensors: list[tuple[str, torch.Tensor]]) -> dict:
    """`NCCLWeightTransferUpdateInfo` as a dict: names, dtype names (`torch.<name>`), shapes."""
    return {
        "names": [n for n, _ in tensors],
        "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in tensors],
        "shapes": [list(t.shape) for _, t in tensors],
    }


class NcclChannel:
    """The trainer's end of the NCCL group (rank 0, vLLM's `PyNcclCommunicator` on `device`)."""

    def __init__(self, communicator, device: torch.device):
        self.comm, self.device, self._held = communicator, device, []

    def broadcast(self, tensor: torch.Tensor) -> None:
        # NCCL sends numel elements from data_ptr: contiguous, on the group's device, kept alive until sent
        t = tensor.to(self.device).contiguous()
        self._held.append(t)
        self.comm.broadcast(t, src=0, stream=torch.cuda.current_stream(self.device))

    def wait(self, check: Callable[[], None]) -> None:
        """Until every broadcast has left, calling `check` meanwhile (it raises when the server gave up)."""
        sent = torch.cuda.Event()
        sent.record(torch.cuda.current_stream(self.device))
        while not sent.query():
            check()
            time.sleep(0.005)
        self._held.clear()


def init_info(host: str, port: int, workers: int) -> dict:
    """`NCCLWeightTransferInitInfo` as a dict: the trainer is rank 0 (hosting the TCP store at host:port),
    the server's `workers` follow it; tensors one at a time (unpacked)."""
    return {
        "master_address": host,
        "master_port": port,
        "rank_offset": 1,
        "world_size": 1 + workers,
        "packed": False,
    }


def open_nccl_channel(routes: TransferRoutes, host: str, timeout: float) -> NcclChannel:
    """The NCCL group of this trainer (rank 0, hosting the TCP store on a free port of `host`) and the
    server's workers (ranks 1..N), both sides joining at once."""
    try:
        from vllm.distributed.weight_transfer.nccl_common import trainer_init
    except ImportError as e:
        raise UserError(
            "vllm_sampler.sync=transfer opens its NCCL group with vLLM's trainer-side helper "
            f"(vllm.distributed.weight_transfer.nccl_common), which does not import here ({e}): install vLLM "
            "(its CUDA build) in the trainer's environment"
        ) from None
    from lmdistill.serve.thread import bind_socket

    with bind_socket(host, 0) as sock:
        port = sock.getsockname()[1]
    info = init_info(host, port, routes.workers())
    world = info["world_size"]
    rendezvous = {"master_address": host, "master_port": port, "world_size": world}
    device = torch.device("cuda", torch.cuda.current_device())
    server = Background(f"{routes.where} /init_weight_transfer_engine", routes.init_engine, info)
    trainer = Background("the trainer's side of the NCCL group", trainer_init, rendezvous)
    where = f"{routes.where}: joining the NCCL group (the trainer at {host}:{port}, {world} ranks)"
    deadline = time.monotonic() + timeout
    while not trainer.done():
        server.raise_if_failed()  # the server refused (one line): the trainer's side would wait forever
        if time.monotonic() > deadline:
            raise UserError(f"{where}: no rendezvous within {timeout:g} s (can the server reach {host}?)")
        time.sleep(0.05)
    try:
        communicator = trainer.result(0)
    except Exception as e:
        raise UserError(f"{where} failed on the trainer's side: {type(e).__name__}: {e}") from None
    server.result(timeout)
    return NcclChannel(communicator, device)


class TransferSync:
    """Full weights over NCCL; `served` is the model name requests use (never changes). `open` joins the
    group once (process 0, at connect); `channel` may be given instead (anything with `broadcast(tensor)`
    and `wait(check)`)."""

    kind = "transfer"
    failure_hint = (
        "A transfer that fails after /start_weight_update leaves vLLM 0.32 without weights (its next request kills its engine): restart the "
        "student's vLLM server and resume (train.resume_from_checkpoint), which joins a new NCCL group and syncs "
        "again at its first on-policy step"
    )

    def __init__(self, client: VllmClient, sync_dir: Path | None = None, *, channel=None):
        self.client, self.routes = client, TransferRoutes(client)
        self.served = client.model
        self.channel = channel
        self.timeout = client.timeout

    def open(self, host: str) -> None:
        if self.channel is None and int(os.environ.get("RANK", "0")) == 0:
            self.channel = open_nccl_channel(self.routes, host, self.timeout)

    def push(self, model: torch.nn.Module, step: int) -> None:
        """pause -> start -> update (its names, dtypes, shapes) beside the broadcasts -> finish; resume always."""
        if self.channel is None:
            raise UserError(f"{self.client.where}: sync=transfer before the NCCL group was opened")
        tensors = untied_tensors(model)
        try:
            self.routes.pause()
            self.routes.start()
            self._send(tensors)
            self.routes.finish()
        except BaseException as e:
            with contextlib.suppress(UserError):
                self.routes.resume()  # also after a failure; the first failure is the one to report
            if isinstance(e, UserError) or not isinstance(e, Exception):
                raise
            # NCCL, CUDA: one line, which VllmSampler hands to every process
            raise UserError(f"broadcasting the weights failed: {type(e).__name__}: {e}") from None
        self.routes.resume()

    def _send(self, tensors: list[tuple[str, torch.Tensor]]) -> None:
        update = Background(f"{self.client.where} /update_weights", self.routes.update, update_info(tensors))
        for _, tensor in tensors:
            update.raise_if_failed()
            self.channel.broadcast(tensor)
        self.channel.wait(update.raise_if_failed)
        update.result(self.timeout)
