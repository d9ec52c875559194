"""The `sampler` group of bench_gpu.py: on-policy sampling through vLLM against batched `generate` on the same
GPU (issue 23), through the CPU scripts' own functions (benchmarks/bench_vllm_sampler.py,
benchmarks/bench_on_policy_samplers.py) and the tests' server starter (tests/vllm/vllmserver.py)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_context import Ctx, _case, _Skip
from gpu_report import _ratio

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2_CARRIED = Path(__file__).resolve().parent / "wheels" / "smollm2-135m"  # fetch_wheels.sh writes it
# The CPU scripts' settings (benchmarks/bench_vllm_sampler.py, bench_on_policy_samplers.py), full size.
SAMPLER_SIZES = {
    "full": dict(
        layers=None,
        batches=(1, 8, 32),
        max_new_tokens=64,
        repeats=3,
        steps=8,
        batch=8,
        on_policy_expected_s=120,
    ),
    "smoke": dict(
        layers=2, batches=(1, 2), max_new_tokens=8, repeats=1, steps=2, batch=2, on_policy_expected_s=0
    ),
}


def _vllm_python(ctx: Ctx) -> tuple[Path, str]:
    """The python that runs vLLM's server, and its vLLM version; _Skip when there is none.

    LMDISTILL_VLLM_PYTHON if set; else on CPU (smoke) the tests' .venv-vllm (tests/vllm/vllmserver.py),
    on a GPU this very python (a vLLM GPU wheel is too big to carry: the image must have it)."""
    named = os.environ.get("LMDISTILL_VLLM_PYTHON")
    if named:
        python = Path(named)
    elif ctx.smoke:
        from tests.vllm.vllmserver import vllm_python

        try:
            python = vllm_python()
        except AssertionError as e:
            raise _Skip(f"no vLLM CPU venv here: {e}") from None
    else:
        python = Path(sys.executable)
    try:
        probe = subprocess.run(
            [str(python), "-c", "import vllm; print(vllm.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
            env=_server_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _Skip(f"no vLLM on this machine: {python} -c 'import vllm' failed: {e}") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise _Skip(
            f"no vLLM on this machine: {python} cannot import vllm ({last[:200]}); "
            "set LMDISTILL_VLLM_PYTHON to a python that has it"
        )
    return python, probe.stdout.strip().splitlines()[-1]


def _server_env() -> dict[str, str]:
    """Extra environment of vLLM's server: dev mode (the reload route), and none of this run's PYTHONPATH
    (run_gpu.sh puts carried wheels there, e.g. another transformers, which vLLM must not pick up)."""
    return {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "PYTHONPATH": ""}


def _smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct's tokenizer (with chat template) and config, without weights: LMDISTILL_SMOLLM2_DIR,
    the folder fetch_wheels.sh carries, or here the embedded model's converted folder."""
    named = os.environ.get("LMDISTILL_SMOLLM2_DIR")
    for folder in [Path(named)] if named else [SMOLLM2_CARRIED]:
        if (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file():
            return folder
    if named:
        raise _Skip(f"LMDISTILL_SMOLLM2_DIR={named} holds no tokenizer.json and config.json")
    try:
        from lmdistill.models.embedded import ensure_embedded

        return ensure_embedded("smollm2-135m", progress=lambda _: None)
    except Exception as e:  # the GPU machine has neither the carried folder nor the embedded package
        raise _Skip(
            f"no SmolLM2 tokenizer: {SMOLLM2_CARRIED} is missing (bash benchmarks/gpu/fetch_wheels.sh, and carry "
            f"benchmarks/gpu/wheels) and the embedded model is not installed ({type(e).__name__}: {e})"
        ) from None


def _sampler_setup(ctx: Ctx, tmp: Path, state: dict) -> dict:
    """vLLM's python, the random SmolLM2-shaped student and teacher saved as folders, the prompts, the vLLM
    server on the student's untied copy started and connected."""
    import shlex

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks.bench_on_policy_samplers import DATA
    from lmdistill.data import load_records
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient
    from lmdistill.training.samplers.weight_sync import write_server_folder
    from lmdistill.training.sampling import eos_ids, prompt_features
    from tests.vllm.vllmserver import VllmServer

    sz = state["sz"]
    python, version = _vllm_python(ctx)
    folder = _smollm2_folder()
    tok = load_tokenizer(str(folder))
    config = AutoConfig.from_pretrained(folder)
    if sz["layers"]:
        config.num_hidden_layers = sz["layers"]
    for name, seed in (("teacher", 1), ("student", 2)):  # random weights, float32 folders, tokenizer beside
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
        state[f"{name}_dir"] = tmp / name
    student = model.to(ctx.device, ctx.dtype).eval()
    rows = load_records(DATA)[: max(sz["batches"])]
    prompts = [
        f["prompt_ids"] for f in prompt_features(rows, tok, 256, sz["max_new_tokens"], need_answers=False)
    ]
    served = write_server_folder(tmp / "student", tmp / "served")
    dtype = "float32" if ctx.smoke else "bfloat16"
    args = () if ctx.smoke else ("--gpu-memory-utilization", "0.3", "--max-num-seqs", "64")
    args += tuple(shlex.split(os.environ.get("LMDISTILL_VLLM_ARGS", "")))
    eager = ctx.smoke or os.environ.get("LMDISTILL_VLLM_EAGER") == "1"
    server = VllmServer(
        served,
        "student",
        tmp / "vllm.log",
        args=args,
        kv_gib=1,
        max_model_len=512,
        env=_server_env(),
        python=python,
        cpu=ctx.smoke,
        dtype=dtype,
        enforce_eager=eager,
    )
    server.start()
    state["server"] = server
    with open(ctx.lines + ".servers", "a") as fh:  # the parent stops it if this process is killed
        fh.write(f"{server.proc.pid}\n")
    server.wait(timeout=max(60.0, state["deadline"] - time.monotonic() - 30))
    state.update(
        tok=tok,
        student=student,
        prompts=prompts,
        eos=eos_ids(tok, student),
        client=VllmClient(server.url, "student", 600).connect(tok, "reload"),
    )
    return {
        "vllm_python": str(python),
        "vllm_version": version,
        "vllm_args": " ".join(
            ["--dtype", dtype, *(["--enforce-eager"] if eager else []), "--max-model-len", "512", *args]
        ),
        "vllm_ready_after_s": round(server.ready_after or 0.0, 1),
        "student": f"SmolLM2-135M-Instruct's config, {config.num_hidden_layers} layers, random weights, {ctx.dtype}",
        "tokenizer_from": str(folder),
        "prompts": len(prompts),
    }


def _sampler_tokens(ctx: Ctx, state: dict) -> dict:
    """benchmarks/bench_vllm_sampler.py's measurement, the student on this device."""
    from benchmarks.bench_vllm_sampler import tokens_per_s

    sz = state["sz"]
    results = tokens_per_s(
        state["student"],
        state["tok"],
        state["prompts"],
        state["eos"],
        state["client"],
        list(sz["batches"]),
        sz["max_new_tokens"],
        sz["repeats"],
    )
    ratio = {
        b: _ratio(r["vllm"]["tokens_per_s_median"], r["generate"]["tokens_per_s_median"])
        for b, r in results.items()
    }
    settings = {k: sz[k] for k in ("batches", "max_new_tokens", "repeats")}
    return {"tokens_per_s": results, "vllm_over_generate": ratio, "settings": settings}


def _sampler_sync(ctx: Ctx, state: dict) -> dict:
    from benchmarks.bench_vllm_sampler import time_sync

    return {
        "full_weight_sync_s": round(time_sync(state["client"], state["student"], state["tmp"] / "sync"), 3)
    }


def _sampler_on_policy(ctx: Ctx, state: dict) -> dict:
    """benchmarks/bench_on_policy_samplers.py's two runs (generate, then vLLM with reload sync every step),
    trainer on this device: teacher and student the random folders above."""
    from benchmarks.bench_on_policy_samplers import run_once, write_prompts

    sz = state["sz"]
    a = argparse.Namespace(steps=sz["steps"], batch=sz["batch"], max_new_tokens=sz["max_new_tokens"])
    tmp = state["tmp"] / "on_policy"
    tmp.mkdir()
    data = write_prompts(tmp / "prompts.jsonl", a.batch * a.steps)
    overrides, check = {}, {}
    if ctx.cuda:  # bf16 autocast, the teacher in bf16; vLLM serves bf16, so the sample check gets more room
        overrides = {
            "train": {"extra": {"disable_tqdm": True}, "bf16": True},
            "teacher": {"dtype": "bfloat16"},
        }
        check = {"vllm_sampler": {"check_atol": float(os.environ.get("LMDISTILL_CHECK_ATOL", "0.2"))}}
    out, logs = {}, {"generate": [], "vllm": []}
    for name, url in (("generate", None), ("vllm", state["server"].url)):
        more = {**overrides, **check} if url else overrides  # `config` merges them into its sections
        out[name] = run_once(
            a,
            tmp,
            name,
            state["student_dir"],
            data,
            url,
            log_rows=logs[name],
            teacher=str(state["teacher_dir"]),
            overrides=more,
        )
    g, v = (out[k]["median_after_step_0"] for k in ("generate", "vllm"))
    return {
        "samplers": out,
        "vllm_logprob_diff": [h.get("vllm_logprob_diff") for h in logs["vllm"]],
        "vllm_over_generate": {
            "sampling": _ratio(v["sampling"], g["sampling"]),
            "sampling_sync_check": _ratio(v["sampling"] + v["sync"] + v["check"], g["sampling"]),
            "step_total": _ratio(v["total"], g["total"]),
        },
        "settings": {
            "steps": a.steps,
            "batch": a.batch,
            "max_new_tokens": a.max_new_tokens,
            **overrides,
            **check,
        },
    }


def group_sampler(ctx: Ctx, limit_s: float) -> None:
    """Setup (vLLM's server up), tokens/s at each batch, one sync, then the on-policy split if time is left."""
    sz = SAMPLER_SIZES["smoke" if ctx.smoke else "full"]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_sampler_") as tmp:
        state = {"sz": sz, "tmp": Path(tmp), "deadline": start + limit_s}
        try:
            _case(ctx, "sampler_setup", _sampler_setup, Path(tmp), state)
            if "client" not in state:
                return
            _case(ctx, "sampler_tokens_per_s", _sampler_tokens, state)
            _case(ctx, "sampler_sync", _sampler_sync, state)
            left = state["deadline"] - time.monotonic()
            if left > sz["on_policy_expected_s"]:
                _case(ctx, "sampler_on_policy", _sampler_on_policy, state)
            else:
                ctx.emit("sampler_on_policy", status="skipped", reason=f"time limit ({left:.0f} s left)")
        finally:
            if state.get("server") is not None:
                state["server"].stop()
