"""Tasks with gold answers: built-in (arithmetic levels, sentiment, format following) and user files,
plus the in-context-learning prompt layout. See docs/tasks.md.

    from lmdistill.tasks import get_task, icl_prompt, select_demos
    task = get_task("arithmetic:1")
    train, heldout = task.examples("train", 200, seed=0), task.examples("heldout", 50)
    demos = select_demos(train, heldout[0], k=4, method="nearest")
    prompt = icl_prompt(task, demos, heldout[0])
    task.check(teacher_output, heldout[0])
"""

from lmdistill.tasks.base import SPLITS, Example, Task
from lmdistill.tasks.checks import check_output
from lmdistill.tasks.icl import DEFAULT_TEMPLATE, icl_prompt, select_demos, similarity
from lmdistill.tasks.registry import TaskSpec, get_task, is_builtin, list_tasks, parse_spec
from lmdistill.tasks.user import load_task

__all__ = [
    "DEFAULT_TEMPLATE",
    "SPLITS",
    "Example",
    "Task",
    "TaskSpec",
    "check_output",
    "get_task",
    "icl_prompt",
    "is_builtin",
    "list_tasks",
    "load_task",
    "parse_spec",
    "select_demos",
    "similarity",
]
