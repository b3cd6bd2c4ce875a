"""The registry of tasks: ``project.task`` in ``params.yaml`` -> a :class:`~cvplatform.tasks.base.Task`.

Built-in tasks are listed in :data:`BUILTIN_TASKS` as ``"module:Class"`` and imported only when
asked for, so reading the configuration (the DAGs do it at parse time) never imports torch. A
task shipped in another package registers itself under the ``cvplatform.tasks`` entry-point
group (``[project.entry-points."cvplatform.tasks"] mytask = "mypkg.task:MyTask"``); a test or a
notebook can call :func:`register_task`. docs/tasks.md shows how to add one, file by file.

Example:
    >>> from cvplatform.tasks import get_task, known_tasks
    >>> "classification" in known_tasks()
    True
    >>> get_task("classification").output_names
    ('logits',)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points

from cvplatform.errors import ConfigError
from cvplatform.tasks.base import Agreement, MetricSpec, MonitorSpec, RequestParameter, ServedMetric, Task

#: The tasks that ship with cvplatform: name -> "module:Class" (imported on first use).
BUILTIN_TASKS: dict[str, str] = {
    "classification": "cvplatform.tasks.classification:ClassificationTask",
    "detection": "cvplatform.tasks.detection:DetectionTask",
}
DEFAULT_TASK = "classification"
ENTRY_POINT_GROUP = "cvplatform.tasks"

_registered: dict[str, Callable[[], Task]] = {}


class UnknownTaskError(ConfigError):
    """``project.task`` names no known task (a configuration error, exit 2)."""


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``project.task: <name>`` build ``factory()`` in this process (tests, notebooks)."""
    _registered[name] = factory
    _load.cache_clear()


def unregister_task(name: str) -> None:
    _registered.pop(name, None)
    _load.cache_clear()


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_tasks() -> list[str]:
    """Every task name ``project.task`` accepts in this environment, sorted."""
    return sorted({*BUILTIN_TASKS, *_plugins(), *_registered})


def is_known(name: str) -> bool:
    return name in BUILTIN_TASKS or name in _registered or name in _plugins()


def check_task_name(name: str, key: str = "project.task") -> str:
    """``name`` if it is a known task, else :class:`UnknownTaskError` naming the key and the known tasks."""
    if not is_known(name):
        raise UnknownTaskError(
            f"{key}: unknown task {name!r}. Known tasks: {', '.join(known_tasks())}. Set {key} to one of them "
            "(a task from another package must be installed so that it registers under the "
            f"'{ENTRY_POINT_GROUP}' entry-point group)."
        )
    return name


@cache
def _load(name: str) -> Task:
    if name in _registered:
        return _registered[name]()
    target = BUILTIN_TASKS.get(name) or _plugins().get(name)
    if target is None:
        check_task_name(name)
    module_name, _, attr = str(target).partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    task = cls()
    if not isinstance(task, Task):
        raise UnknownTaskError(f"project.task {name!r}: {target} is not a cvplatform Task (subclass cvplatform.tasks.Task).")
    return task


def get_task(name: str | None = None) -> Task:
    """The task called ``name`` (``None`` = the default, classification).

    Raises:
        UnknownTaskError: no such task (exit 2); the message lists the known ones.
    """
    return _load(check_task_name(name or DEFAULT_TASK))


__all__ = [
    "BUILTIN_TASKS", "DEFAULT_TASK", "Agreement", "MetricSpec", "MonitorSpec", "RequestParameter", "ServedMetric",
    "Task", "UnknownTaskError",
    "check_task_name", "get_task", "is_known", "known_tasks", "register_task", "unregister_task",
]
