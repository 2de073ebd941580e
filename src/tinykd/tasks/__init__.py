"""Tasks by name (`data.task` in a recipe). Each built-in task lives in its own file and is imported here.

Outside this package no module compares a task's name: it asks the task (`get_task(name).generative`, ...).
"""

from tinykd.models.hf import register_hf_task
from tinykd.tasks import causal_lm, classification, detection, masked_lm, seq2seq  # noqa: F401  (the built-ins)
from tinykd.tasks.base import TASKS, Task

# what `hf:` models of each task are (models never import tasks: they are told), in the order errors list them
for _name in ("classification", "masked-lm", "causal-lm", "seq2seq", *TASKS.list()):
    _task = TASKS.get(_name)
    if _task.hf_auto_class is not None:
        register_hf_task(_name, _task.hf_auto_class, _task.needs_labels)


def get_task(name: str) -> Task:
    """The task registered as `name` (an unknown name is one line listing the known ones)."""
    return TASKS.get(name)()


def is_generative(name: str | None) -> bool:
    """Whether the task a checkpoint's or a report's metadata names generates tokens (None: no task saved, an
    image classifier's)."""
    return name is not None and get_task(name).generative


def generative_tasks() -> list[str]:
    """The names of the tasks whose models generate() (what `tinykd export` writes with a KV cache)."""
    return [name for name in TASKS.list() if get_task(name).generative]


def task_of_architecture(architecture: str) -> Task | None:
    """The task whose Hugging Face models are of class `architecture` (e.g. BertForMaskedLM), or None."""
    for name in TASKS.list():
        task = get_task(name)
        if task.hf_architecture and architecture.endswith(task.hf_architecture):
            return task
    return None


def generative_task(encoder_decoder: bool) -> Task:
    """The generative task of a Hugging Face model, from its config's `is_encoder_decoder`."""
    return get_task("seq2seq" if encoder_decoder else "causal-lm")


__all__ = ["TASKS", "Task", "generative_task", "generative_tasks", "get_task", "is_generative", "task_of_architecture"]
