"""Tasks by name (`data.task` in a recipe). Each built-in task lives in its own file and is imported here."""

from tinykd.tasks import causal_lm, classification, masked_lm, seq2seq  # noqa: F401  (registers the built-ins)
from tinykd.tasks.base import IGNORE_INDEX, TASKS, Task


def get_task(name: str) -> Task:
    """The task registered as `name` (an unknown name is one line listing the known ones)."""
    return TASKS.get(name)()


__all__ = ["IGNORE_INDEX", "TASKS", "Task", "get_task"]
