"""Objectives registered by name.

An objective is a class built with (options dataclass, EmbeddingModel). Its `loss(batch)` takes one
rank's micro-batch (a list of packed streams) and returns (loss, metrics); objectives that must
control backward themselves (gradient caching) implement `forward_backward(batch, backward)` instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

_REGISTRY: dict[str, tuple[type, type]] = {}


def register(name: str, options_cls: type) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        _REGISTRY[name] = (cls, options_cls)
        cls.name = name
        return cls

    return wrap


def _ensure_loaded() -> None:
    # Importing the package registers the built-in objectives.
    import embedtrain.objectives  # noqa: F401


def get_objective(name: str) -> tuple[type, type]:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise KeyError(name)
    return _REGISTRY[name]


def objective_names() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


@dataclass
class NoOptions:
    pass
