"""The training methods Tunery runs and what each supports: the one table the API, the dry run and the scheduler read.

A method is named by what the trainer runs (``supervised``, ``dpo``, ``orpo``, ``kto``, ``grpo``); OpenAI's
``method.type`` is ``supervised``, ``dpo`` or ``reinforcement``; a ``dpo`` job picks its preference trainer with
``tunery.method.trainer`` (docs/methods.md), and a ``reinforcement`` job trains with GRPO (docs/reinforcement.md).
The trainer registers one implementation per name here (``trainer/methods/``); a test checks the two tables name
the same methods.

Adding a method: one :class:`MethodInfo` in :data:`METHODS`, one module in ``trainer/methods/`` that registers its
TRL config, dataset builder and trainer class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

TrainingMethod = Literal["supervised", "dpo", "orpo", "kto", "grpo"]
OpenAIMethod = Literal["supervised", "dpo", "reinforcement"]  # OpenAI's ``method.type``
# The TRL preference trainers a ``dpo`` job can run (``tunery.method.trainer``).
PreferenceTrainer = Literal["dpo", "orpo", "kto"]
Adapter = Literal["lora", "qlora", "full"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
ADAPTERS: tuple[str, ...] = get_args(Adapter)
PRECISIONS: tuple[str, ...] = get_args(Precision)

ADAPTER_PARAM = "tunery.training.adapter"
PRECISION_PARAM = "tunery.training.precision"
GRADER_PARAM = "method.reinforcement.grader"  # a reinforcement job's grader, as errors name it


@dataclass(frozen=True)
class MethodInfo:
    """What a method trains on and which combinations of the job's options it supports."""

    name: TrainingMethod
    openai_type: OpenAIMethod  # ``method.type`` of the job
    # The kind of training file it reads (tunery.data.DataFormat kinds).
    data: Literal["supervised", "preference", "reinforcement"]
    lora_base_lr: float  # learning rate at multiplier 1 with a LoRA or QLoRA adapter
    full_base_lr: float  # ... with full fine-tuning (every weight moves: a much smaller step)
    adapters: frozenset[str] = frozenset(ADAPTERS)
    precisions: frozenset[str] = frozenset(PRECISIONS)
    continues_fine_tuned: bool = True  # ``model`` may be an ``ft:`` model (training continues its adapter)
    packing: bool = False  # padding-free batching of several examples per micro-batch
    train_on_inputs: bool = False  # loss on every token, not only the assistant's
    data_mix: bool = False  # ``tunery.data.mix`` (general chat examples mixed into the training set)
    beta: bool = False  # ``method.dpo.hyperparameters.beta`` applies
    rows_per_example: int = 1  # rows of TRL's dataset per training example (KTO: a desirable and an undesirable)
    reinforcement: bool = False  # samples completions and learns from a grader's rewards (``plan.reinforcement``)

    def base_learning_rate(self, adapter: str) -> float:
        return self.full_base_lr if adapter == "full" else self.lora_base_lr


LORA_BASE_LR = 1e-3
FULL_BASE_LR = 2e-5
# Preference methods move a model that already answers well: a 10x smaller step than supervised training.
PREFERENCE_LORA_BASE_LR = 1e-4
PREFERENCE_FULL_BASE_LR = 5e-6
# Reinforcement fine-tuning moves the policy by its own samples' advantages: the preference methods' small step.
REINFORCEMENT_LORA_BASE_LR = 1e-4
REINFORCEMENT_FULL_BASE_LR = 5e-6

METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo(
            "supervised",
            "supervised",
            "supervised",
            LORA_BASE_LR,
            FULL_BASE_LR,
            packing=True,
            train_on_inputs=True,
            data_mix=True,
        ),
        MethodInfo("dpo", "dpo", "preference", PREFERENCE_LORA_BASE_LR, PREFERENCE_FULL_BASE_LR, beta=True),
        MethodInfo("orpo", "dpo", "preference", PREFERENCE_LORA_BASE_LR, PREFERENCE_FULL_BASE_LR, beta=True),
        MethodInfo(
            "kto", "dpo", "preference", PREFERENCE_LORA_BASE_LR, PREFERENCE_FULL_BASE_LR, beta=True, rows_per_example=2
        ),
        MethodInfo(
            "grpo",
            "reinforcement",
            "reinforcement",
            REINFORCEMENT_LORA_BASE_LR,
            REINFORCEMENT_FULL_BASE_LR,
            reinforcement=True,
        ),
    )
}


def method_info(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown training method {name!r} (expected one of {', '.join(METHODS)})") from None


@dataclass(frozen=True)
class Unsupported:
    """A combination the method does not support: a 400 (or the job's error) naming ``param``."""

    message: str
    param: str
    code: str | None = "unsupported_method"


def unsupported(
    info: MethodInfo,
    *,
    adapter: str,
    precision: str,
    continuing: bool = False,
    data_mix: bool = False,
    train_on_inputs: bool = False,
    packing_requested: bool = False,
) -> Unsupported | None:
    """The first option of a job that ``info`` does not support, or None. ``packing_requested``: the request set
    ``packing`` to true itself (its default is true, and means nothing to a method without packing)."""
    label = f"method {info.name!r}"
    if adapter not in info.adapters:
        return Unsupported(f"{label} does not support adapter {adapter!r}.", ADAPTER_PARAM)
    if precision not in info.precisions:
        return Unsupported(f"{label} does not support precision {precision!r}.", PRECISION_PARAM)
    if continuing and not info.continues_fine_tuned:
        return Unsupported(f"{label} cannot continue a fine-tuned model; start from a base model.", "model")
    if data_mix and not info.data_mix:
        return Unsupported(
            f"tunery.data.mix mixes chat examples into supervised training; {label} trains on preference pairs only.",
            "tunery.data.mix",
            "invalid_method",
        )
    if train_on_inputs and not info.train_on_inputs:
        return Unsupported(
            f"{label} compares whole replies; train_on_inputs applies to supervised training only.",
            "tunery.training.train_on_inputs",
        )
    if packing_requested and not info.packing:
        return Unsupported(
            f"{label} does not pack examples; packing applies to supervised training only.",
            "tunery.training.packing",
        )
    return None
