"""Supervised fine-tuning (SFT): chat records, tokenized with the model's chat template and an assistant mask,
through TRL's SFTTrainer; padding-free packing of each micro-batch; the data options (``tunery.data``)."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from tunery.data import ChatRecord
from tunery.jobstate import MIX_PARAM, file_error_code
from tunery.methods import METHODS
from tunery.plan import TrainingPlan

from ..chat import ChatTemplateError, ChatTokenizer, TokenizedSet
from ..data_options import apply_options
from ..errors import TrainerError
from ..packing import PADDING_KEY, RowCollator, rows_help
from .base import Datasets, TrainerMethod
from .registry import register

if TYPE_CHECKING:
    from ..base import TrainingRun
    from ..data_files import DataFileRead

log = logging.getLogger("tunery.trainer")


class Supervised(TrainerMethod):
    info = METHODS["supervised"]

    def config_class(self) -> type:
        from trl import SFTConfig

        return SFTConfig

    def config_extra(self, plan: TrainingPlan) -> dict[str, Any]:
        # Padding-free packing: TRL's collator joins a micro-batch's examples into one row with position ids that
        # restart at 0 for each example; transformers turns them into a block-diagonal causal mask (sdpa, eager) or
        # varlen boundaries (flash attention). One example per micro-batch has no padding to remove.
        padding_free = plan.packing and plan.micro_batch_size > 1
        return dict(
            # Already truncated by us (and counted); TRL's cut would be a no-op, and it refuses one when padding-free.
            max_length=None if padding_free else plan.max_seq_length,
            packing=False,  # TRL's packing regroups examples into rows, which would change what a step is
            padding_free=padding_free,
            prediction_loss_only=True,
        )

    def trainer_class(self) -> type:
        return sft_trainer_in_rows()

    def adapt_trainer(self, trainer: Any, tokenizer: Any, plan: TrainingPlan) -> None:
        # A packed step over max_seq_length tokens runs as rows, not one long row (trainer/packing.py).
        if plan.packing and plan.micro_batch_size > 1 and rows_help(trainer.model):
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            trainer.data_collator = RowCollator(trainer.data_collator, plan.max_seq_length, pad)

    def build_datasets(
        self, run: TrainingRun, chat: ChatTokenizer, train: DataFileRead, valid: DataFileRead | None
    ) -> Datasets:
        """Token ids and assistant masks (labels -100 off the mask); every token trains with train_on_inputs."""
        truncate = run.spec.data is None or run.spec.data.long_examples == "truncate"
        train_set = apply_data_options(run, chat, tokenize(run, chat, train.records, "training_file", truncate))
        valid_set = tokenize(run, chat, valid.records, "validation_file") if valid is not None else None
        if run.plan.train_on_inputs:
            for example in [*train_set.examples, *(valid_set.examples if valid_set is not None else [])]:
                example.assistant_masks = [1] * len(example.input_ids)
        run.tokens_per_epoch = train_set.n_tokens
        run.trained_tokens_per_epoch = train_set.n_trained_tokens
        return tokenized_datasets(train_set, valid_set)


@functools.cache
def sft_trainer_in_rows() -> type:
    """TRL's SFTTrainer, taking steps collated in rows (trainer/packing.py): it counts a step's tokens without the
    padding that evens its rows (TRL counts a padding-free step as its one row's width)."""
    from trl import SFTTrainer

    class SFTTrainerInRows(SFTTrainer):  # type: ignore[misc]
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            padding = inputs.pop(PADDING_KEY, None)
            counted = self._total_train_tokens
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if padding is not None and self._total_train_tokens != counted:  # a training step: count its tokens
                self._total_train_tokens = counted + int(inputs["position_ids"].numel()) - padding
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return out

    return SFTTrainerInRows


def tokenized_datasets(train: TokenizedSet, valid: TokenizedSet | None = None) -> Datasets:
    """SFTTrainer's datasets over pre-tokenized ``input_ids`` + ``assistant_masks``."""
    from datasets import Dataset

    return Datasets(
        train=Dataset.from_dict(train.columns()),
        valid=Dataset.from_dict(valid.columns()) if valid is not None else None,
        n_examples=len(train.examples),
    )


def tokenize(
    run: TrainingRun, chat: ChatTokenizer, records: list[ChatRecord], param: str, truncate: bool = True
) -> TokenizedSet:
    """Token ids and masks; cut at max_seq_length unless ``truncate`` is off (long examples are dropped)."""
    max_len = run.plan.max_seq_length
    code = file_error_code(param).value
    try:
        tokenized = chat.tokenize_all(records, max_len if truncate else None)
    except ChatTemplateError as e:
        raise TrainerError(f"{param}: {e}", code=code, param=param) from e
    if tokenized.n_truncated:
        run.warn(
            f"{tokenized.n_truncated} of {tokenized.n_records} examples in the {param.replace('_', ' ')} are "
            f"longer than max_seq_length={max_len} tokens and were truncated",
            {
                "file": param,
                "truncated": tokenized.n_truncated,
                "examples": tokenized.n_records,
                "max_seq_length": max_len,
                "lines": tokenized.truncated_lines[:20],
            },
        )
    if tokenized.n_dropped:
        run.warn(
            f"{tokenized.n_dropped} examples in the {param.replace('_', ' ')} have no assistant token within "
            f"max_seq_length={max_len} and were skipped",
            {"file": param, "skipped": tokenized.n_dropped, "lines": tokenized.dropped_lines[:20]},
        )
    if not tokenized.examples:
        raise TrainerError(
            f"{param}: no example has an assistant token to train on within max_seq_length={max_len}",
            code=code,
            param=param,
        )
    return tokenized


def apply_data_options(run: TrainingRun, chat: ChatTokenizer, train: TokenizedSet) -> TokenizedSet:
    """The job's ``tunery.data`` options on the tokenized training set, reported in one info event."""
    options = run.spec.data
    if options is None:
        return train
    pool = None
    if options.mix is not None and run.mix_data is not None:
        pool = tokenize(run, chat, run.mix_data.records, MIX_PARAM, options.long_examples == "truncate").examples
    examples, report = apply_options(
        train.examples,
        drop_duplicate_examples=options.drop_duplicates,
        long_examples=options.long_examples,
        max_seq_length=run.plan.max_seq_length,
        mix_pool=pool,
        mix_file=options.mix.file.file_id if options.mix else None,
        fraction=options.mix.fraction if options.mix else None,
        seed=run.spec.seed,
    )
    if not examples:
        raise TrainerError(
            "training_file: no example is left after the data options (tunery.data)",
            code="invalid_training_file",
            param="training_file",
        )
    run.data_options = report
    message = report.message()
    log.info("%s", message)
    run.reporter.event("info", message, report.data())
    train.examples = examples
    return train


register(Supervised())
