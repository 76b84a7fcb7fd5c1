"""What a training method registers: its TRL config and trainer class, its dataset builder, its figures.

A method pairs a TRL config with a TRL trainer (as TRL does: ``SFTConfig``/``SFTTrainer``, ``DPOConfig``/
``DPOTrainer``, ...) and says how the job's records become that trainer's dataset. Everything else (reading the
files, the device, the base model, the adapter, the callback, checkpoints, resume states, reports) is the one base
run's (``trainer/run.py``, ``trainer/base.py``). What combinations a method supports is declared in the shared
table :data:`tunery.methods.METHODS`, which the API and the scheduler read too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunery.graders import Embedder, Judge
from tunery.methods import MethodInfo
from tunery.plan import TrainingPlan

if TYPE_CHECKING:
    from trainer.base import TrainingRun
    from trainer.chat import ChatTokenizer
    from trainer.data_files import DataFileRead
    from trainer.loading import DeviceChoice


@dataclass
class Datasets:
    """The method's datasets, ready for its TRL trainer."""

    train: Any  # datasets.Dataset
    valid: Any | None
    n_examples: int  # training examples (pairs for the preference methods) as built, before TRL's own processing


class TrainerMethod:
    """One training method. Subclasses set :attr:`info` and implement the TRL classes and the dataset builder."""

    info: MethodInfo
    results_columns: tuple[str, ...] = ()  # the method's figures in results.csv, after OpenAI's five columns

    # -- TRL
    def config_class(self) -> type:
        raise NotImplementedError

    def config_extra(self, plan: TrainingPlan) -> dict[str, Any]:
        """The method's own fields of its TRL config, beyond :func:`trainer.config.trl_args`."""
        return {}

    def config_args(
        self, args: dict[str, Any], plan: TrainingPlan, choice: DeviceChoice, model_path: str
    ) -> dict[str, Any]:
        """Every field of the method's TRL config: the shared ones (``args``) and the method's own, for a run on
        ``choice`` from the model of ``model_path``. A method whose config lacks a shared field, or counts a batch
        otherwise, overrides this."""
        return {**args, **self.config_extra(plan)}

    def trainer_class(self) -> type:
        raise NotImplementedError

    def trainer_extra(
        self, ref_model: Any, plan: TrainingPlan | None, judge: Judge | None = None, embedder: Embedder | None = None
    ) -> dict[str, Any]:
        """The method's own arguments of its TRL trainer (a reference model, for the methods that have one; the
        reward functions of a reinforcement method, from ``plan``, with ``judge`` for its score_model graders and
        ``embedder`` for its cosine metrics)."""
        return {}

    def needs_reference_copy(self, plan: TrainingPlan) -> bool:
        """Whether the run loads a frozen copy of the base model as the reference model (full fine-tuning of a
        method with a reference; an adapter's reference is the model with the adapter disabled)."""
        return False

    def build_trainer(
        self,
        model: Any,
        tokenizer: Any,
        args: Any,
        peft_config: Any,
        datasets: Datasets,
        callbacks: list[Any] | None = None,
        ref_model: Any = None,
        plan: TrainingPlan | None = None,
        judge: Judge | None = None,
        embedder: Embedder | None = None,
    ) -> Any:
        from transformers import PrinterCallback

        from ..kernels import fused_head_model, score_labelled_positions_only

        cls = self.trainer_class()
        trainer = cls(
            model=model,
            args=args,
            train_dataset=datasets.train,
            eval_dataset=datasets.valid,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
            **self.trainer_extra(ref_model, plan, judge, embedder),
        )
        trainer.remove_callback(PrinterCallback)  # the run prints its own one-line progress
        score_labelled_positions_only(fused_head_model(trainer))
        if plan is not None:
            self.adapt_trainer(trainer, tokenizer, plan)
        return trainer

    def adapt_trainer(self, trainer: Any, tokenizer: Any, plan: TrainingPlan) -> None:
        """What the method changes in its built TRL trainer for the run's plan (supervised: its collator)."""

    # -- data
    def prepare_records(self, run: TrainingRun, train: DataFileRead) -> None:
        """Work on the records before the model is loaded (the preference methods drop duplicate pairs here)."""

    def build_datasets(
        self, run: TrainingRun, chat: ChatTokenizer, train: DataFileRead, valid: DataFileRead | None
    ) -> Datasets:
        """The training and validation datasets from the records; sets the run's tokens per epoch when it can."""
        raise NotImplementedError

    def count_examples(self, run: TrainingRun, trainer: Any, datasets: Datasets) -> int:
        """The training examples the run steps over, once TRL has prepared its dataset."""
        return datasets.n_examples

    # -- reports
    writes_eval_reports = True  # the eval report (trainer/evaluation.py) applies to the method's records
    valid_loss_from_eval = True  # TRL's eval_loss is the validation loss (a reinforcement method's is not)

    def metrics(self, logs: dict[str, Any]) -> dict[str, float]:
        """Figures of the method beyond loss and accuracy, from one of TRL's step logs."""
        return {}

    def manifest_extra(self, run: TrainingRun) -> dict[str, Any]:
        return {}
