"""Task registry: ``get_task(task_config)`` builds the task a ``TaskConfig`` names (``TASKS``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rnn_spectra.errors import unknown_name
from rnn_spectra.tasks.adding import AddingTask
from rnn_spectra.tasks.base import Task
from rnn_spectra.tasks.copying import CopyingTask
from rnn_spectra.tasks.images import DigitsTask, PixelMNISTTask

if TYPE_CHECKING:
    from rnn_spectra.config import TaskConfig

TASKS: dict[str, type[Task]] = {
    "adding": AddingTask,
    "copying": CopyingTask,
    "digits": DigitsTask,
    "pixel_mnist": PixelMNISTTask,
}


def solved_rule(name: str):
    """``rule(metrics, baseline) -> bool``: task ``name``'s success criterion on a metrics row."""
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name].solved_by


def get_task(cfg: TaskConfig) -> Task:
    """``TASKS[cfg.name].from_config(cfg)``; an unknown name is a one-line error."""
    if cfg.name not in TASKS:
        raise unknown_name("task", cfg.name, TASKS)
    return TASKS[cfg.name].from_config(cfg)


__all__ = ["TASKS", "Task", "get_task", "solved_rule", "AddingTask", "CopyingTask", "DigitsTask", "PixelMNISTTask"]
