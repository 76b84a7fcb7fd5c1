"""ORPO (Odds Ratio Preference Optimization): no reference model; its ``beta`` is the paper's lambda, the weight of
the odds-ratio term. ORPO lives in ``trl.experimental`` in TRL 1.x."""

from __future__ import annotations

from tunery.methods import METHODS

from .preference import PreferenceMethod
from .registry import register


class ORPO(PreferenceMethod):
    info = METHODS["orpo"]
    has_reference = False

    def config_class(self) -> type:
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig

    def trainer_class(self) -> type:
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer


register(ORPO())
