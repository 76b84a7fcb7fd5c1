"""The registry the method modules add themselves to (:func:`register`) and the run reads (:func:`get_method`)."""

from __future__ import annotations

from tunery.methods import METHODS

from .base import TrainerMethod

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
