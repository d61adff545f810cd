"""Import every task module, so a worker has them loaded before it forks."""

import importlib
import pkgutil


def import_task_modules() -> list[str]:
    from .. import tasks

    names = []
    for module in pkgutil.iter_modules(tasks.__path__):
        if module.name not in {"cron", "loader"}:
            importlib.import_module(f"{tasks.__name__}.{module.name}")
            names.append(module.name)
    return names
