"""lmdistill: distil large language models into small ones, and measure what the student kept.

Python entry points (imported on first use, so `import lmdistill` stays light):
`distillation_trainer` (a TRL-shaped trainer from models, a config object and rows), `RunConfig` and
`load_config` (the config object, from YAML or in code), `run` (what `lmdistill train` calls).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["RunConfig", "distillation_trainer", "load_config", "run"]

_WHERE = {
    "RunConfig": "lmdistill.config",
    "load_config": "lmdistill.config",
    "distillation_trainer": "lmdistill.training.python_api",
    "run": "lmdistill.training.run",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lmdistill' has no attribute {name!r}")
