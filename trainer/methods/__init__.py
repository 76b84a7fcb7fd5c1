"""The trainer's method registry: one :class:`TrainerMethod` per method of :data:`tunery.methods.METHODS`.

Each method module registers itself when it is imported (below); :func:`get_method` is how the run finds one.
Adding a method: its :class:`tunery.methods.MethodInfo`, and one module here that subclasses TrainerMethod (or
PreferenceMethod) and calls :func:`register`.
"""

from __future__ import annotations

from tunery.methods import METHODS

from .base import Datasets, TrainerMethod

_REGISTRY: dict[str, TrainerMethod] = {}


def register(method: TrainerMethod) -> TrainerMethod:
    name = method.info.name
    if name not in METHODS:
        raise ValueError(f"method {name!r} is not in tunery.methods.METHODS")
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is registered twice")
    _REGISTRY[name] = method
    return method


def get_method(name: str) -> TrainerMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"no trainer for method {name!r} (registered: {', '.join(_REGISTRY)})") from None


def registered() -> dict[str, TrainerMethod]:
    return dict(_REGISTRY)


from . import dpo, kto, orpo, supervised  # noqa: E402,F401  (each registers its method)

__all__ = ["Datasets", "TrainerMethod", "get_method", "register", "registered"]
