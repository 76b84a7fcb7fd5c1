"""The trainer's methods: one :class:`TrainerMethod` per method of :data:`tunery.methods.METHODS`.

Each method module registers itself when it is imported (below); :func:`get_method` is how the run finds one.
Adding a method: its :class:`tunery.methods.MethodInfo`, and one module here that subclasses TrainerMethod (or
PreferenceMethod), calls :func:`register`, and is imported below.
"""

from __future__ import annotations

from . import dpo, grpo, kto, orpo, supervised  # noqa: F401  (each registers its method)
from .base import Datasets, TrainerMethod
from .registry import get_method, register, registered

__all__ = ["Datasets", "TrainerMethod", "get_method", "register", "registered"]
