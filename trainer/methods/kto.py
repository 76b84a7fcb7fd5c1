"""KTO (Kahneman-Tversky Optimization): unpaired rows from the same preference pairs. Each pair gives a desirable
example (its preferred reply, ``label`` true) and an undesirable one (its rejected reply), side by side."""

from __future__ import annotations

from typing import Any

from tunery.data import PreferenceRecord
from tunery.methods import METHODS
from tunery.plan import TrainingPlan

from .preference import PreferenceMethod, kto_rows
from .registry import register


class KTO(PreferenceMethod):
    info = METHODS["kto"]

    def rows(self, records: list[PreferenceRecord], seed: int) -> list[dict[str, Any]]:
        return kto_rows(records, seed)

    def config_class(self) -> type:
        from trl import KTOConfig

        return KTOConfig

    def config_extra(self, plan: TrainingPlan) -> dict[str, Any]:
        # Sequential: rows stay in the (seeded, shuffled) order of kto_rows, so a batch holds whole pairs.
        return {**super().config_extra(plan), "train_sampling_strategy": "sequential"}

    def trainer_class(self) -> type:
        from trl import KTOTrainer

        return KTOTrainer


register(KTO())
