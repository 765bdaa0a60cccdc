"""Objectives registered by name: `train.objective` -> the class the engine builds.

An objective is a class built with (options, device): its options dataclass is registered under the
same name in config/objective_options.py, where the recipe loader types it before any model code runs.
Its `loss(model, batch, step)` takes one rank's micro-batch (a list of packed streams) and returns
(loss, metrics); objectives that must control backward themselves (gradient caching) implement
`forward_backward(model, batch, backward, step)` instead (objectives/base.py).
"""
from __future__ import annotations

from typing import Callable

from embedtrain.config.objective_options import OPTIONS

_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        if name not in OPTIONS:
            raise ValueError(f"objective {name!r} has no options: register its options dataclass with "
                             f"@options_for({name!r}) (embedtrain/config/objective_options.py)")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def get_objective(name: str) -> tuple[type, type]:
    """(objective class, options class) registered as `name`."""
    if name not in _REGISTRY:
        raise KeyError(f"no objective registered as {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name], OPTIONS[name]


def objective_names() -> list[str]:
    return sorted(_REGISTRY)
