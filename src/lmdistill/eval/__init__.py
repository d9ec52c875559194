"""`lmdistill eval`: several models on the same inputs (tasks, held-out text), one report.

`score_tokens` (perplexity, top-1 agreement and KL to a teacher on held-out tokens) also serves
training's held-out report and the demo.

`run_eval` is the entry point; the metric helpers are public so they can be reused and tested.
Names are imported lazily, so the process that measures peak memory (which imports
`lmdistill.eval.cost`) does not pay for the training stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "disk_size": "cost",
    "peak_memory": "cost",
    "prefill_tokens_per_s": "cost",
    "compression_ratio": "metrics",
    "generation_agreement": "metrics",
    "percentile": "metrics",
    "speedup": "metrics",
    "text_features": "metrics",
    "find_training_log": "run",
    "read_training_curves": "run",
    "run_eval": "run",
    "TokenScores": "scoring",
    "score_tokens": "scoring",
    "Task": "tasks",
    "TaskItem": "tasks",
    "is_correct": "tasks",
    "load_task": "tasks",
    "load_tasks": "tasks",
    "predicted_answer": "tasks",
    "score_task": "tasks",
}

__all__ = [
    "Task",
    "TaskItem",
    "TokenScores",
    "compression_ratio",
    "disk_size",
    "find_training_log",
    "generation_agreement",
    "is_correct",
    "load_task",
    "load_tasks",
    "peak_memory",
    "percentile",
    "predicted_answer",
    "prefill_tokens_per_s",
    "read_training_curves",
    "run_eval",
    "score_task",
    "score_tokens",
    "speedup",
    "text_features",
]

if TYPE_CHECKING:
    from lmdistill.eval.cost import disk_size, peak_memory, prefill_tokens_per_s
    from lmdistill.eval.metrics import (
        compression_ratio,
        generation_agreement,
        percentile,
        speedup,
        text_features,
    )
    from lmdistill.eval.run import find_training_log, read_training_curves, run_eval
    from lmdistill.eval.scoring import TokenScores, score_tokens
    from lmdistill.eval.tasks import (
        Task,
        TaskItem,
        is_correct,
        load_task,
        load_tasks,
        predicted_answer,
        score_task,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmdistill.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lmdistill.eval.{module}"), name)
    globals()[name] = value
    return value
