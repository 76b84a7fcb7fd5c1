"""DPO (Direct Preference Optimization): TRL's DPOConfig and DPOTrainer over prompt / chosen / rejected rows."""

from __future__ import annotations

from tunery.methods import METHODS

from .preference import PreferenceMethod
from .registry import register


class DPO(PreferenceMethod):
    info = METHODS["dpo"]

    def config_class(self) -> type:
        from trl import DPOConfig

        return DPOConfig

    def trainer_class(self) -> type:
        from trl import DPOTrainer

        return DPOTrainer


register(DPO())
