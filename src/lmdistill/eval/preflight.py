"""`lmdistill eval`, step 1: check every input and every model before any model loads or file is written.

`preflight_eval` returns an `EvalPlan`: the models (tokenizer loaded, weights checked readable),
their column labels, the tasks, the held-out text and the generation requests every model gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmdistill.errors import UserError
from lmdistill.eval.cost import disk_size
from lmdistill.eval.metrics import read_text
from lmdistill.eval.tasks import Task, load_tasks
from lmdistill.teachers.types import Request, Sampling


@dataclass
class EvalPlan:
    """What `run_eval` will do, all checked. specs: {"name", "path", "tokenizer"} per model, the
    teacher first; requests: one greedy chat request per task prompt (tasks in order)."""

    specs: list[dict]
    labels: list[str]
    teacher: str | None
    tasks: list[Task]
    text: str | None
    prompts: list[str]
    requests: list[Request]
    warmup: list[Request]
    device: str


def preflight_eval(
    models: list[str],
    *,
    teacher: str | None,
    tasks: list[str],
    text: str | None,
    max_examples: int | None,
    max_new_tokens: int,
    batch_size: int,
    device: str,
    routed: bool = False,
) -> EvalPlan:
    """Check the arguments, read the tasks and text, and check every model (`preflight_model`);
    any problem is a UserError before any model loads. routed: held-out rows routed to several teachers
    (`lmdistill.eval.several`) are something to evaluate on too."""
    from lmdistill.models import resolve_device

    names: list[str] = []
    for n in ([teacher] if teacher else []) + list(models):
        if n not in names:
            names.append(n)
    if not names:
        raise UserError("no model to evaluate: name at least one MODEL")
    if not tasks and not text and not routed:
        raise UserError("nothing to evaluate on: give --task FILE.jsonl and/or --text FILE.txt")
    for label, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise UserError(f"{label} must be at least 1, got {value}")
    if max_examples is not None and max_examples < 1:
        raise UserError(f"max_examples must be at least 1, got {max_examples}")
    device = str(resolve_device(device))
    task_list = load_tasks(tasks, max_examples=max_examples)
    text_str = read_text(text) if text else None
    specs = [preflight_model(n, need_chat=bool(task_list)) for n in names]
    prompts = [item.prompt for task in task_list for item in task.items]
    sampling = Sampling(max_new_tokens=max_new_tokens)
    return EvalPlan(
        specs=specs,
        labels=_labels(names),
        teacher=teacher,
        tasks=task_list,
        text=text_str,
        prompts=prompts,
        requests=[Request.chat([{"role": "user", "content": p}], sampling) for p in prompts],
        warmup=[Request.chat([{"role": "user", "content": "Hi"}], Sampling(max_new_tokens=2))],
        device=device,
    )


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ("org/name") or a short name."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _labels(names: list[str]) -> list[str]:
    """Short column labels: a folder's name (its parent too when two would clash)."""

    def short(n: str, depth: int) -> str:
        parts = Path(n).parts
        return "/".join(parts[-depth:]) if parts else n

    for depth in (1, 2, 3):
        labels = [short(n, depth) for n in names]
        if len(set(labels)) == len(labels):
            return labels
    return names


def preflight_model(name: str, *, need_chat: bool) -> dict:
    """Resolve a model and load its tokenizer and config; any failure is a UserError naming it."""
    from transformers import AutoConfig

    from lmdistill.models import load_tokenizer, resolve_model_path

    if _looks_like_path(name) and not Path(name).expanduser().exists():
        raise UserError(f"model {name!r}: folder not found")
    try:
        path = resolve_model_path(str(Path(name).expanduser()) if name.startswith("~") else name)
        tokenizer = load_tokenizer(path)
        try:
            AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"no loadable config ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    except UserError as exc:
        raise UserError(f"model {name!r} cannot be loaded: {exc}") from exc
    if Path(path).is_dir():
        if disk_size(path) is None:
            raise UserError(
                f"model {name!r} cannot be loaded: no weight files (*.safetensors, *.bin) in {path}"
            )
        from safetensors import safe_open

        for f in sorted(Path(path).glob("*.safetensors")):
            try:
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            except Exception as exc:
                raise UserError(
                    f"model {name!r} cannot be loaded: unreadable weight file {f}: {exc}"
                ) from exc
    if need_chat and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"model {name!r}: its tokenizer has no chat template, so task prompts cannot be rendered"
        )
    return {"name": name, "path": str(path), "tokenizer": tokenizer}
