"""The preference methods (DPO, ORPO, KTO): preference pairs become TRL's conversational rows; the reward
figures are reported every step and written to the results file.

    preference records -> (DPO, ORPO: prompt / chosen / rejected; KTO: prompt / completion / label, two rows per pair)
         -> TRL's trainer of the method, on the job's adapter (LoRA, QLoRA) or on every weight (full)

The reference model of DPO and KTO: with a fresh adapter, the base model with the adapter disabled (TRL gets the plain
model, ``ref_model=None`` and a ``peft_config``, and computes the reference log-probs under
``PeftModel.disable_adapter()``); continuing an ``ft:`` model's adapter, a frozen copy of that adapter (TRL 1.16
adds it as the ``ref`` adapter when it gets a PeftModel and no reference), so the reference is the model the job
starts from; with full fine-tuning, a frozen copy of the base model, loaded by the run. ORPO has no reference model.
Prompts and replies stay conversational: TRL renders them with the model's chat template.
"""

from __future__ import annotations

import json
import logging
import random
from typing import TYPE_CHECKING, Any

from tunery.data import PreferenceRecord
from tunery.graders import Embedder, Judge
from tunery.plan import TrainingPlan

from ..chat import ChatTokenizer
from ..errors import TrainerError
from .base import Datasets, TrainerMethod

if TYPE_CHECKING:
    from ..base import TrainingRun
    from ..data_files import DataFileRead

log = logging.getLogger("tunery.trainer.preference")

# TRL's per-step logs that are reported as method metrics ("rewards/margins" -> "rewards_margins").
METRIC_PREFIXES = ("rewards/", "logps/")
METRIC_NAMES = ("kl", "nll_loss", "log_odds_ratio", "log_odds_chosen")
# Extra columns of results.csv, after OpenAI's five.
RESULTS_EXTRA = ("rewards_accuracies", "rewards_margins", "rewards_chosen", "rewards_rejected")


def _prompt(record: PreferenceRecord) -> list[dict[str, Any]]:
    return [m.as_template_dict() for m in record.prompt]


def _tools(record: PreferenceRecord) -> str | None:
    # A JSON string: tool schemas differ from line to line, which an Arrow column cannot hold as structs.
    return json.dumps(record.tools) if record.tools else None


def paired_rows(records: list[PreferenceRecord]) -> list[dict[str, Any]]:
    """DPO and ORPO rows in TRL's conversational preference format."""
    rows = [
        {
            "prompt": _prompt(r),
            "chosen": [r.chosen.as_template_dict()],
            "rejected": [r.rejected.as_template_dict()],
            "tools": _tools(r),
        }
        for r in records
    ]
    return _drop_empty_tools(rows)


def kto_rows(records: list[PreferenceRecord], seed: int, shuffle: bool = True) -> list[dict[str, Any]]:
    """KTO's unpaired rows from the same records: each pair gives a desirable example (its preferred reply,
    ``label`` true) and an undesirable one (its rejected reply, ``label`` false), side by side. KTO samples in
    order (its KL term pairs neighbours), so the pairs are shuffled once here, with the job's seed."""
    order = list(records)
    if shuffle:
        random.Random(seed).shuffle(order)
    rows = []
    for r in order:
        prompt, tools = _prompt(r), _tools(r)
        rows.append({"prompt": prompt, "completion": [r.chosen.as_template_dict()], "label": True, "tools": tools})
        rows.append({"prompt": prompt, "completion": [r.rejected.as_template_dict()], "label": False, "tools": tools})
    return _drop_empty_tools(rows)


def _drop_empty_tools(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if any(row["tools"] for row in rows):
        return rows
    return [{k: v for k, v in row.items() if k != "tools"} for row in rows]


def drop_duplicate_pairs(records: list[PreferenceRecord]) -> tuple[list[PreferenceRecord], int]:
    """Exact duplicates (same prompt, same preferred and rejected replies), first kept."""
    seen: set[str] = set()
    kept = []
    for r in records:
        key = json.dumps(
            [_prompt(r), r.chosen.as_template_dict(), r.rejected.as_template_dict(), r.tools], sort_keys=True
        )
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, len(records) - len(kept)


def pair_lengths(records: list[PreferenceRecord], chat: ChatTokenizer) -> list[int]:
    """Each pair's length in tokens: its longer side, prompt and reply rendered with the chat template (as the
    validation report counts them)."""
    tok = chat.tokenizer
    out = []
    for r in records:
        sides = [chat.render([*r.prompt, reply], tools=r.tools or None) for reply in (r.chosen, r.rejected)]
        out.append(max(len(ids) for ids in tok(sides, add_special_tokens=False)["input_ids"]))
    return out


def drop_long_pairs(
    records: list[PreferenceRecord], chat: ChatTokenizer, max_length: int
) -> tuple[list[PreferenceRecord], int]:
    """``tunery.data.long_examples = "drop"``: the pairs whose longer side fits ``max_length`` tokens, and the
    count dropped (instead of TRL truncating them)."""
    kept = [r for r, n in zip(records, pair_lengths(records, chat), strict=True) if n <= max_length]
    return kept, len(records) - len(kept)


def dataset_tokens(dataset: Any) -> int:
    """Tokens one epoch of TRL's tokenized dataset runs through the model (prompt once per sequence)."""
    names = set(dataset.column_names)
    total = 0
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= names:  # DPO
        for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True):
            total += 2 * len(p) + len(c) + len(r)
    elif {"chosen_input_ids", "rejected_input_ids"} <= names:  # ORPO: prompt + reply per sequence
        for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"], strict=True):
            total += len(c) + len(r)
    elif {"prompt_ids", "completion_ids"} <= names:  # KTO
        for p, c in zip(dataset["prompt_ids"], dataset["completion_ids"], strict=True):
            total += len(p) + len(c)
    return total


def method_metric_name(key: str) -> str | None:
    if key.startswith(METRIC_PREFIXES) or key in METRIC_NAMES:
        return key.replace("/", "_")
    return None


class PreferenceMethod(TrainerMethod):
    """What DPO, ORPO and KTO share: the records, the rows, the reward figures. A subclass names its TRL classes
    and its rows (:meth:`rows`)."""

    results_columns = RESULTS_EXTRA
    has_reference = True  # ORPO has none

    def rows(self, records: list[PreferenceRecord], seed: int) -> list[dict[str, Any]]:
        return paired_rows(records)

    def config_extra(self, plan: TrainingPlan) -> dict[str, Any]:
        extra: dict[str, Any] = {"beta": plan.beta}
        if self.has_reference:
            extra["precompute_ref_log_probs"] = False
        return extra

    def trainer_extra(
        self, ref_model: Any, plan: TrainingPlan | None, judge: Judge | None = None, embedder: Embedder | None = None
    ) -> dict[str, Any]:
        return {"ref_model": ref_model} if self.has_reference else {}

    def needs_reference_copy(self, plan: TrainingPlan) -> bool:
        return self.has_reference and plan.adapter == "full"

    def prepare_records(self, run: TrainingRun, train: DataFileRead) -> None:
        if run.spec.data is not None and run.spec.data.drop_duplicates:
            train.records, dropped = drop_duplicate_pairs(train.records)
            message = f"Data options: {dropped} duplicate preference pair(s) dropped; {len(train.records)} left"
            log.info("%s", message)
            run.reporter.event("info", message, {"duplicates_dropped": dropped, "examples": len(train.records)})

    def build_datasets(
        self, run: TrainingRun, chat: ChatTokenizer, train: DataFileRead, valid: DataFileRead | None
    ) -> Datasets:
        from datasets import Dataset

        records, max_len = train.records, run.plan.max_seq_length
        if run.spec.data is not None and run.spec.data.long_examples == "drop":
            records, dropped = drop_long_pairs(records, chat, max_len)
            message = (
                f"Data options: {dropped} preference pair(s) longer than max_seq_length={max_len} tokens "
                f"dropped; {len(records)} left"
            )
            log.info("%s", message)
            run.reporter.event("info", message, {"long_dropped": dropped, "examples": len(records)})
            if not records:
                raise TrainerError(
                    f"training_file: no preference pair fits within max_seq_length={max_len} "
                    '(tunery.data.long_examples is "drop")',
                    code="invalid_training_file",
                    param="training_file",
                )
        valid_rows = self.rows(valid.records, run.spec.seed) if valid is not None else None
        return Datasets(
            train=Dataset.from_list(self.rows(records, run.spec.seed)),
            valid=Dataset.from_list(valid_rows) if valid_rows else None,
            n_examples=len(records),
        )

    def count_examples(self, run: TrainingRun, trainer: Any, datasets: Datasets) -> int:
        """Pairs left once TRL tokenized them (it skips a pair whose prompt alone is longer than max_seq_length)."""
        dataset, max_len = trainer.train_dataset, run.plan.max_seq_length
        n_pairs = -(-len(dataset) // self.info.rows_per_example)
        if n_pairs < datasets.n_examples:
            skipped = datasets.n_examples - n_pairs
            run.warn(
                f"{skipped} of {datasets.n_examples} preference pairs have a prompt longer than "
                f"max_seq_length={max_len} tokens and were skipped",
                {"file": "training_file", "skipped": skipped, "max_seq_length": max_len},
            )
        if n_pairs == 0:
            raise TrainerError(
                f"training_file: no preference pair fits within max_seq_length={max_len}",
                code="invalid_training_file",
                param="training_file",
            )
        run.tokens_per_epoch = run.trained_tokens_per_epoch = dataset_tokens(dataset)
        return n_pairs

    def metrics(self, logs: dict[str, Any]) -> dict[str, float]:
        out = {}
        for key, value in logs.items():
            name = method_metric_name(key)
            if name is not None and isinstance(value, int | float):
                out[name] = float(value)
        return out

    def manifest_extra(self, run: TrainingRun) -> dict[str, Any]:
        if not self.has_reference:
            reference = None
        elif run.plan.adapter == "full":
            reference = "base model, frozen copy"
        elif run.spec.init_adapter_prefix:
            reference = "the fine-tuned model the job continues, frozen copy of its adapter"
        else:
            reference = "base model, adapter disabled"
        return {"preference": {"beta": run.plan.beta, "reference_model": reference}}
