"""Task registry: ``TASKS[name](seq_len=T)`` builds a task; ``get_task`` validates the name."""

from __future__ import annotations

from rnn_spectra.errors import ConfigError, unknown_name
from rnn_spectra.tasks.adding import AddingTask
from rnn_spectra.tasks.base import Task
from rnn_spectra.tasks.copying import CopyingTask

TASKS: dict[str, type[Task]] = {"adding": AddingTask, "copying": CopyingTask}


def get_task(name: str, seq_len: int) -> Task:
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ConfigError(f"task.seq_len must be an integer >= 2, got {seq_len!r}")
    return TASKS[name](seq_len=seq_len)


__all__ = ["TASKS", "Task", "get_task", "AddingTask", "CopyingTask"]
