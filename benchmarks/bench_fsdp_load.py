"""Host memory per process of loading a model into FSDP2 shards: every process loads it whole (the old
way: `load_model` everywhere, then `shard_model`) against process 0 alone (`load_model(meta=True)` on the
others, then `shard_from_rank0`), on CPU with gloo.

The model is a Llama built from a config (random weights; memory does not depend on their values),
saved once as safetensors in a temporary folder. Each way runs in a fresh `torchrun` so each process's
peak RSS (`ru_maxrss`) belongs to that way alone; `base` is the RSS after the imports (the model's own
code included), before loading; `after` is the RSS once sharded. On CPU the shards live in host memory
too (1/N of the weights per process); on GPUs they would not, and process 0's host peak would be the
whole model alone, the others' one tensor at a time.

    python benchmarks/bench_fsdp_load.py [--procs 2 --layers 12 --hidden 768 --json benchmarks/results/fsdp_load_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(folder: str, way: str, out: str) -> None:
    """One process of one way: load, shard, write {rank, base, peak, after} (MiB) to out/<way>_<rank>.json."""
    import gc

    import torch
    import torch.distributed as dist

    from lmdistill.models.loading import load_model
    from lmdistill.models.sharding import shard_from_rank0, shard_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    load_model(folder, meta=True)  # imports the model's code (~150 MiB) before `base`, in both ways
    gc.collect()
    base = _rss_mb()
    start = time.perf_counter()
    if way == "every_process":
        model = shard_model(load_model(folder))
    else:
        model = shard_from_rank0(load_model(folder, meta=rank != 0), torch.device("cpu"))
    dist.barrier()
    seconds = time.perf_counter() - start
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    row = {"rank": rank, "base_mib": base, "peak_mib": peak, "after_mib": _rss_mb(), "seconds": seconds}
    row["local_parameters"] = sum(p.to_local().numel() for p in model.parameters())  # kept alive until here
    Path(out, f"{way}_{rank}.json").write_text(json.dumps(row))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--json", default="benchmarks/results/fsdp_load_memory.json")
    p.add_argument("--worker", nargs=3, metavar=("FOLDER", "WAY", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(*a.worker)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmdistill.eval.measure import machine_info, versions

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.hidden * 8 // 3,
        num_hidden_layers=a.layers,
        num_attention_heads=a.hidden // 64,
        num_key_value_heads=max(1, a.hidden // 256),
        tie_word_embeddings=False,
    )
    load_before = os.getloadavg()
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = LlamaForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        # float32 on disk: from_pretrained keeps the tensors mapped from the file (page cache, shared by the
        # processes). bfloat16 on disk, loaded as float32 (a bf16 checkpoint, an fp32 student): every
        # loading process converts it into private memory.
        for saved in ("float32", "bfloat16"):
            folder = Path(tmp, saved)
            model.to(getattr(torch, saved)).save_pretrained(folder)
            ways = {}
            for way in ("every_process", "process_0"):
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={a.procs}", __file__]
                cmd += ["--worker", str(folder), way, tmp]
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                ways[way] = [json.loads(Path(tmp, f"{way}_{r}.json").read_text()) for r in range(a.procs)]
            cases[f"{saved} on disk, loaded as float32"] = ways
    weights_mib = params * 4 / 2**20
    result = {
        "benchmark": "fsdp_load_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": machine_info(),
        "versions": versions(),
        "model": {"parameters": params, "fp32_weights_mib": round(weights_mib, 1), **config.to_diff_dict()},
        "processes": a.procs,
        "cases": cases,
        "note": (
            "MiB; peak = ru_maxrss of the process (pages mapped from the safetensors file count in every process "
            "that touched them, though the page cache holds them once); base = RSS after imports and the model's "
            "code, before loading; CPU: each process's shards (1/N of the weights) are host memory too"
        ),
    }
    print(f"{params / 1e6:.0f}M parameters, {weights_mib:.0f} MiB of fp32 weights; {a.procs} processes")
    for case, ways in cases.items():
        print(case)
        for way, rows in ways.items():
            for row in rows:
                print(
                    f"  {way:14} rank {row['rank']}: base {row['base_mib']:.0f}, peak {row['peak_mib']:.0f} "
                    f"(+{row['peak_mib'] - row['base_mib']:.0f}), after sharding {row['after_mib']:.0f} MiB, "
                    f"{row['seconds']:.1f} s"
                )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {a.json}")


if __name__ == "__main__":
    main()
