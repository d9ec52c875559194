"""Host memory per process of loading a model into FSDP2 shards: every process loads it whole (the old
way: `load_model` everywhere, then `shard_model`) against process 0 alone (`load_model(meta=True)` on the
others, then `shard_from_rank0`), on CPU with gloo.

The model is a Llama built from a config (random weights; memory does not depend on their values),
saved once as safetensors in a temporary folder. Each way runs in a fresh `torchrun` so each process's
peak RSS (`ru_maxrss`) belongs to that way alone; `base` is the RSS after the imports, before loading;
`after` is the RSS once sharded (the shards plus what the allocator kept).

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
    gc.collect()
    base = _rss_mb()
    start = time.perf_counter()
    if way == "every_process":
        shard_model(load_model(folder))
    else:
        shard_from_rank0(load_model(folder, meta=rank != 0), torch.device("cpu"))
    dist.barrier()
    seconds = time.perf_counter() - start
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    row = {"rank": rank, "base_mib": base, "peak_mib": peak, "after_mib": _rss_mb(), "seconds": seconds}
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
    with tempfile.TemporaryDirectory() as tmp:
        model = LlamaForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(Path(tmp, "model"))
        del model
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        ways = {}
        for way in ("every_process", "process_0"):
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={a.procs}", __file__]
            cmd += ["--worker", str(Path(tmp, "model")), way, tmp]
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            ways[way] = [json.loads(Path(tmp, f"{way}_{r}.json").read_text()) for r in range(a.procs)]
    weights_mib = params * 4 / 2**20
    result = {
        "benchmark": "fsdp_load_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_average_before": os.getloadavg(),
        "machine": machine_info(),
        "versions": versions(),
        "model": {"parameters": params, "fp32_weights_mib": round(weights_mib, 1), **config.to_diff_dict()},
        "processes": a.procs,
        "ways": ways,
        "note": "MiB; peak = ru_maxrss of the process (imports included); growth = peak - base",
    }
    print(f"{params / 1e6:.0f}M parameters, {weights_mib:.0f} MiB of fp32 weights; {a.procs} processes")
    for way, rows in ways.items():
        for row in rows:
            print(
                f"{way:14} rank {row['rank']}: base {row['base_mib']:.0f}, peak {row['peak_mib']:.0f} "
                f"(+{row['peak_mib'] - row['base_mib']:.0f}), after sharding {row['after_mib']:.0f} MiB, "
                f"{row['seconds']:.1f} s"
            )
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {a.json}")


if __name__ == "__main__":
    main()
