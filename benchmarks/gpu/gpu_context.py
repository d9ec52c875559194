"""What every group's process of bench_gpu.py shares: the model shapes and sizes (full, and the CPU smoke's),
the context a case runs in (`Ctx`: device, dtype, where its result rows go), running one case so that its
error or skip is recorded and never raised (`_case`), timing a call (`_timed`), and the loss spec at this
run's vocab (`_spec`, used by the loss and the training cases)."""

from __future__ import annotations

import json
import statistics
import time
import traceback

GIB = 2**30

TEACHER = dict(  # Qwen2.5-1.5B
    hidden_size=1536,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    intermediate_size=8960,
    vocab_size=151936,
)
STUDENT = dict(  # Qwen2.5-0.5B
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
)
SIZES = {
    "full": dict(
        tokens=8192,
        vocab=151936,
        chunks=(1024, 2048),
        batch=4,
        seq=1024,
        steps=12,
        skip=2,
        warmup=2,
        repeats=7,
        teacher=TEACHER,
        student=STUDENT,
    ),
    "smoke": dict(
        tokens=256,
        vocab=1024,
        chunks=(64, 128),
        batch=2,
        seq=64,
        steps=4,
        skip=1,
        warmup=1,
        repeats=2,
        teacher=dict(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            vocab_size=1024,
        ),
        student=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=1024,
        ),
    ),
}


# ----------------------------------------------------------------------------------------------------
# helpers used inside a group's process


class Ctx:
    """What a group needs to know: sizes, device, dtype, where to write its results."""

    def __init__(self, smoke: bool, lines: str):
        import torch

        self.smoke = smoke
        self.sz = SIZES["smoke" if smoke else "full"]
        self.cuda = not smoke
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.float32 if smoke else torch.bfloat16
        self.lines = lines
        self.compile_backend = "aot_eager" if smoke else "inductor"  # CPU smoke: trace only, no codegen

    def emit(self, name: str, **result) -> None:
        row = {"case": name, **result}
        with open(self.lines, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> int:
        import torch

        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak(self) -> int | None:
        import torch

        return torch.cuda.max_memory_allocated() if self.cuda else None

    def free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


class _Skip(Exception):
    """A case that cannot run here (not an error): recorded as skipped with the reason."""


def _case(ctx: Ctx, name: str, fn, *args, **kwargs) -> None:
    """Run one case; its result or its error goes to the results file, never up."""
    t0 = time.perf_counter()
    try:
        result = fn(ctx, *args, **kwargs)
        ctx.emit(name, status="ok", wall_s=round(time.perf_counter() - t0, 2), **result)
    except _Skip as e:
        ctx.emit(name, status="skipped", reason=str(e))
    except Exception as e:  # an OOM or a peer's failure must leave the other cases' numbers
        oom = "out of memory" in str(e).lower()
        ctx.emit(
            name,
            status="oom" if oom else "error",
            error=f"{type(e).__name__}: {str(e)[:600]}",
            wall_s=round(time.perf_counter() - t0, 2),
        )
        traceback.print_exc()
    finally:
        ctx.free()


def _timed(ctx: Ctx, fn) -> dict:
    """Median time (ms) of fn() after warm-up; peak memory over the timed calls (bytes, inputs included)."""
    import torch

    for _ in range(ctx.sz["warmup"]):
        fn()
    base = ctx.reset_peak()
    times = []
    for _ in range(ctx.sz["repeats"]):
        if ctx.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    peak = ctx.peak()
    out = {"ms": round(statistics.median(times), 3), "ms_min": round(min(times), 3)}
    if peak is not None:
        out["peak_gib"] = round(peak / GIB, 3)
        out["delta_gib"] = round((peak - base) / GIB, 3)
    return out


def _spec(ctx: Ctx, loss: str, chunk: int, ce: float = 0.5, kd: float = 0.5):
    from lmdistill.chunked import LossSpec

    return LossSpec(loss=loss, ce_weight=ce, kd_weight=kd, beta=0.5, vocab=ctx.sz["vocab"], chunk_size=chunk)
