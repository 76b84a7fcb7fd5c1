"""The training plan: what a job asks for (:class:`PlanRequest`, with ``"auto"``) and what its trainer runs
(:class:`TrainingPlan`, every value resolved), joined by one function, :func:`resolve_plan`.

Job creation and the dry run build the request from the API body and check it (:func:`check_request`); the
scheduler resolves it when the job's files are validated, against the trainer's hardware, and stores the plan whole
with the job (``jobs.plan``); the JobSpec carries it to the trainer, which builds TRL's config from it
(``trainer/config.py``). Adding a training option: a field of :class:`TrainingOptions` (the request), one of
:class:`TrainingPlan` (resolved), its line in :func:`resolve_plan`, and its TRL mapping.

The ``auto`` rules (docs/hyperparameters.md) are in :mod:`tunery.hyperparams`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunery import hyperparams
from tunery.methods import (
    Adapter,
    MethodInfo,
    Precision,
    PreferenceTrainer,
    TrainingMethod,
    Unsupported,
    method_info,
    unsupported,
)

Auto = Literal["auto"]
DEFAULT_BETA = 0.1
_MODULE_NAME = re.compile(r"[A-Za-z0-9_.]{1,128}")


# ---- the request ---------------------------------------------------------------------------------------------
class Hyperparameters(BaseModel):
    """OpenAI's three hyperparameters (``auto`` or a number)."""

    model_config = ConfigDict(extra="forbid")
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] | None = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = "auto"
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] | None = "auto"


class DPOHyperparameters(Hyperparameters):
    """OpenAI's ``FineTuneDPOHyperparameters``: the supervised three and ``beta`` in (0, 2]."""

    beta: Auto | Annotated[float, Field(gt=0, le=2)] | None = "auto"


ReasoningEffort = Literal["default", "low", "medium", "high"]


class ReinforcementSettings(BaseModel):
    """The hyperparameters of OpenAI's reinforcement method beyond the three (docs/reinforcement.md says how each
    maps onto GRPO)."""

    model_config = ConfigDict(extra="forbid")
    eval_interval: Auto | Annotated[int, Field(ge=1)] | None = "auto"
    eval_samples: Auto | Annotated[int, Field(ge=1, le=64)] | None = "auto"
    compute_multiplier: Auto | Annotated[float, Field(gt=1e-5, le=10, allow_inf_nan=False)] | None = "auto"
    reasoning_effort: ReasoningEffort | None = "default"


class ReinforcementHyperparameters(Hyperparameters, ReinforcementSettings):
    """OpenAI's ``FineTuneReinforcementHyperparameters``: the three and the reinforcement method's own."""

    def settings(self) -> ReinforcementSettings:
        return ReinforcementSettings(**self.model_dump(include=set(ReinforcementSettings.model_fields)))


class ReinforcementOptions(BaseModel):
    """``tunery.reinforcement``: GRPO's settings beyond OpenAI's hyperparameters (docs/reinforcement.md)."""

    model_config = ConfigDict(extra="forbid")
    num_generations: Auto | Annotated[int, Field(ge=2, le=64)] = "auto"  # completions sampled per prompt
    max_completion_length: Annotated[int, Field(ge=1, le=8192)] = 256  # tokens per sampled completion
    kl_coef: Annotated[float, Field(ge=0, le=10)] = 0.0  # GRPO's beta: KL to the starting model (0: none)
    temperature: Annotated[float, Field(gt=0, le=2)] = 1.0  # of the sampling


class ReinforcementRequest(BaseModel):
    """What a ``reinforcement`` job asks for beyond the three hyperparameters: its grader (OpenAI's grader object,
    checked by :func:`tunery.graders.parse_grader` before it gets here), OpenAI's reinforcement hyperparameters and
    ``tunery.reinforcement``."""

    grader: dict[str, Any]
    hyperparameters: ReinforcementSettings = Field(default_factory=ReinforcementSettings)
    options: ReinforcementOptions = Field(default_factory=ReinforcementOptions)


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: Annotated[int, Field(ge=1, le=256)] = 16
    alpha: Auto | Annotated[int, Field(ge=1, le=4096)] = "auto"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: str | list[str] = "all-linear"

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v: str | list[str]) -> str | list[str]:
        names_ok = isinstance(v, list) and 1 <= len(v) <= 64 and all(_MODULE_NAME.fullmatch(n) for n in v)
        if v != "all-linear" and not names_ok:
            raise ValueError('must be "all-linear" or a list of 1 to 64 module names (letters, digits, "_", ".")')
        return v


class PlainOptions(BaseModel):
    """The training options a plan takes as they were asked (no ``auto``, nothing to resolve). Both the request
    (:class:`TrainingOptions`) and the plan (:class:`TrainingPlan`) have them: a new option of this kind is one
    field here and its TRL mapping (``trainer/config.py``)."""

    lr_scheduler_type: hyperparams.LrScheduler = "linear"
    warmup_steps: Annotated[int, Field(ge=0, le=1_000_000)] | None = None  # when set, wins over warmup_ratio
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_grad_norm: Annotated[float, Field(ge=0, le=1e6)] = 1.0  # 0 turns clipping off
    train_on_inputs: bool = False  # loss on every token, not only the assistant's
    adapter: Adapter = "lora"  # docs/adapters.md
    # NEFTune: uniform noise of this scale on the input embeddings while training (None: off)
    neftune_noise_alpha: Annotated[float, Field(gt=0, le=100)] | None = None


PLAIN_OPTIONS = frozenset(PlainOptions.model_fields)


class TrainingOptions(PlainOptions):
    """``tunery.training``: the training options beyond OpenAI's three hyperparameters (docs/hyperparameters.md)."""

    model_config = ConfigDict(extra="forbid")
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    max_seq_length: Auto | Annotated[int, Field(ge=32, le=131_072)] = "auto"
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=256)] = 1
    # ``batch_size: "auto"`` resolved from a token budget: as many examples as the file's mean example fills it with.
    batch_tokens: Annotated[int, Field(ge=64, le=1_048_576)] | None = None
    n_checkpoints: Auto | Annotated[int, Field(ge=1, le=1000)] = "auto"
    n_evals: Auto | Annotated[int, Field(ge=0, le=1000)] = "auto"
    packing: bool = True
    precision: Precision = "auto"
    # Recompute each layer's activations in the backward pass (less memory, about a third more compute); ``auto``:
    # unless the job's memory estimate is well within the memory without it (tunery.estimate.gradient_checkpointing).
    gradient_checkpointing: Auto | bool = "auto"
    lora: LoraOptions = Field(default_factory=LoraOptions)

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainingOptions:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError("give warmup_ratio or warmup_steps, not both")
        return self

    @property
    def requested_max_seq_length(self) -> int:
        """The sequence length the files are checked at (``auto``: the default)."""
        return hyperparams.DEFAULT_MAX_SEQ_LENGTH if self.max_seq_length == "auto" else self.max_seq_length


class PlanRequest(BaseModel):
    """Everything a plan is resolved from: the method, OpenAI's hyperparameters (``beta`` for the preference
    methods), ``tunery.training``, and for a reinforcement job its grader and settings."""

    method: TrainingMethod = "supervised"
    hyperparameters: DPOHyperparameters = Field(default_factory=DPOHyperparameters)
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    reinforcement: ReinforcementRequest | None = None

    @classmethod
    def from_job_fields(
        cls,
        method: dict[str, Any] | None,
        hyperparameters: dict[str, Any] | None,
        training: dict[str, Any] | None,
        trainer: PreferenceTrainer | None = None,
        reinforcement: dict[str, Any] | None = None,
    ) -> PlanRequest:
        """The request as a job stores it: OpenAI's ``method`` object and ``hyperparameters``, and the
        ``tunery.training``, ``tunery.method.trainer`` and ``tunery.reinforcement`` extensions. Resolved values
        read back as themselves."""
        method = method or {}
        openai_type = method.get("type") or "supervised"
        hp = dict(hyperparameters or {})
        if openai_type == "dpo":
            beta = ((method.get("dpo") or {}).get("hyperparameters") or {}).get("beta")
            hp["beta"] = "auto" if beta is None else beta
        rl = None
        if openai_type == "reinforcement":
            section = method.get("reinforcement") or {}
            rl_hp = dict(section.get("hyperparameters") or {})
            extra = {k: v for k, v in rl_hp.items() if k in ReinforcementSettings.model_fields}
            rl = ReinforcementRequest(
                grader=section.get("grader") or {},
                hyperparameters=ReinforcementSettings(**extra),
                options=ReinforcementOptions(**(reinforcement or {})),
            )
        known = set(Hyperparameters.model_fields) | {"beta"}
        return cls(
            method=_method_of(openai_type, trainer),
            hyperparameters=DPOHyperparameters(**{k: v for k, v in hp.items() if k in known}),
            training=TrainingOptions(**(training or {})),
            reinforcement=rl,
        )

    def method_info(self) -> MethodInfo:
        return method_info(self.method)

    def openai_hyperparameters(self) -> dict[str, Any]:
        hp = self.hyperparameters.model_dump(include={"batch_size", "learning_rate_multiplier", "n_epochs"})
        return {k: ("auto" if v is None else v) for k, v in hp.items()}

    def openai_method(self) -> dict[str, Any]:
        """The job's ``method`` as OpenAI returns it (``auto`` until the files are validated)."""
        rl = self.reinforcement
        return _openai_method(
            self.method,
            self.openai_hyperparameters(),
            self.hyperparameters.beta,
            grader=rl.grader if rl else None,
            rl_hyperparameters=rl.hyperparameters.model_dump() if rl else None,
        )


def _method_of(openai_type: str, trainer: PreferenceTrainer | None) -> TrainingMethod:
    """The method a job of OpenAI's ``method.type`` runs (``tunery.method.trainer`` picks a dpo job's)."""
    if openai_type == "dpo":
        return trainer or "dpo"
    return "grpo" if openai_type == "reinforcement" else "supervised"


def _openai_method(
    method: str,
    hp: dict[str, Any],
    beta: Any,
    *,
    grader: dict[str, Any] | None = None,
    rl_hyperparameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    openai_type = method_info(method).openai_type
    if openai_type == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": {**hp, "beta": "auto" if beta is None else beta}}}
    if openai_type == "reinforcement":
        rl_hp = {k: ("auto" if v is None else v) for k, v in (rl_hyperparameters or {}).items()}
        if rl_hp.get("reasoning_effort") == "auto":
            rl_hp["reasoning_effort"] = "default"
        section = {"grader": grader or {}, "hyperparameters": {**hp, **rl_hp}, "response_format": None}
        return {"type": "reinforcement", "reinforcement": section}
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def _multiplier(request: PlanRequest) -> float:
    m = request.hyperparameters.learning_rate_multiplier
    return 1.0 if m in (None, "auto") else float(m)


def learning_rate(request: PlanRequest) -> float:
    """The rate a request trains with: its method's base rate for its adapter, times its multiplier."""
    return method_info(request.method).base_learning_rate(request.training.adapter) * _multiplier(request)


def check_request(
    request: PlanRequest,
    *,
    has_validation: bool,
    continuing: bool = False,
    data_mix: bool = False,
    explicit: frozenset[str] = frozenset(),
    hyperparameters_param: str = "hyperparameters",
) -> Unsupported | None:
    """What job creation, the dry run and the scheduler refuse before resolving: combinations the method does not
    support (``tunery.methods``) and options that contradict each other. ``explicit``: the ``tunery.training``
    fields the request set itself; ``hyperparameters_param``: where the request gave its hyperparameters."""
    t = request.training
    if learning_rate(request) <= 0:  # a positive multiplier so small that the rate rounds to 0 (below ~1e-318)
        base = method_info(request.method).base_learning_rate(t.adapter)
        return Unsupported(
            f"learning_rate_multiplier {_multiplier(request)!r} times the base learning rate {base!r} rounds to 0: "
            "give a larger multiplier.",
            f"{hyperparameters_param}.learning_rate_multiplier",
            "invalid_hyperparameters",
        )
    problem = unsupported(
        method_info(request.method),
        adapter=t.adapter,
        precision=t.precision,
        continuing=continuing,
        data_mix=data_mix,
        train_on_inputs=t.train_on_inputs,
        packing_requested="packing" in explicit and t.packing,
    )
    if problem is not None:
        return problem
    batch = request.hyperparameters.batch_size
    if isinstance(batch, int) and t.batch_tokens is not None:
        return Unsupported(
            f"tunery.training.batch_tokens resolves an 'auto' batch_size from a token budget, and batch_size is "
            f"{batch}: give one or the other.",
            "tunery.training.batch_tokens",
            None,
        )
    if isinstance(batch, int) and batch % t.gradient_accumulation_steps:
        return Unsupported(
            f"gradient_accumulation_steps ({t.gradient_accumulation_steps}) must divide batch_size ({batch}): "
            "each batch is split into that many equal micro-batches.",
            "tunery.training.gradient_accumulation_steps",
            None,
        )
    rl = request.reinforcement
    if method_info(request.method).reinforcement and rl is None:
        return Unsupported(
            "a reinforcement job needs method.reinforcement with its grader.", "method.reinforcement", "invalid_method"
        )
    if rl is not None and isinstance(rl.hyperparameters.eval_interval, int) and "n_evals" in explicit:
        return Unsupported(
            "give method.reinforcement.hyperparameters.eval_interval or tunery.training.n_evals, not both.",
            "tunery.training.n_evals",
            "invalid_hyperparameters",
        )
    if isinstance(t.n_evals, int) and t.n_evals > 0 and not has_validation:
        return Unsupported(
            "n_evals needs a validation_file to evaluate.", "tunery.training.n_evals", "missing_validation"
        )
    return None


# ---- the resolved plan ---------------------------------------------------------------------------------------
class LoraPlan(BaseModel):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


class ReinforcementPlan(BaseModel):
    """A reinforcement job's resolved settings: its grader (OpenAI's object, checked), GRPO's sampling and OpenAI's
    reinforcement hyperparameters as they apply (docs/reinforcement.md)."""

    grader: dict[str, Any]
    num_generations: int = Field(ge=2)  # completions sampled per prompt (GRPO's group)
    max_completion_length: int = Field(ge=1)
    kl_coef: float = Field(ge=0)
    temperature: float = Field(gt=0)
    eval_interval: int | None = None  # optimizer steps between evaluations (None: no validation file)
    eval_samples: int = Field(default=1, ge=1)  # completions sampled per validation prompt at an evaluation
    compute_multiplier: float = 1.0
    reasoning_effort: ReasoningEffort = "default"

    def openai_hyperparameters(self) -> dict[str, Any]:
        return {
            "eval_interval": "auto" if self.eval_interval is None else self.eval_interval,
            "eval_samples": self.eval_samples,
            "compute_multiplier": self.compute_multiplier,
            "reasoning_effort": self.reasoning_effort,
        }

    def options(self) -> dict[str, Any]:
        """``tunery.reinforcement`` as the job object shows it once resolved."""
        return self.model_dump(include=set(ReinforcementOptions.model_fields))


class TrainingPlan(PlainOptions):
    """What the trainer runs: every option resolved (docs/hyperparameters.md). Stored with the job and embedded in
    its JobSpec."""

    method: TrainingMethod = "supervised"
    n_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate_multiplier: float = 1.0
    learning_rate: float = Field(gt=0)
    beta: float | None = Field(default=None, gt=0, le=2)  # DPO's and KTO's beta, ORPO's lambda; None: supervised
    # bf16 | fp16 | fp32; ``auto`` only where the control plane cannot know the GPU (the trainer resolves it)
    precision: Precision = "auto"
    max_seq_length: int = Field(default=hyperparams.DEFAULT_MAX_SEQ_LENGTH, ge=2)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)  # micro-batches per optimizer step; divides batch_size
    batch_tokens: int | None = None  # the token budget an ``auto`` batch_size was resolved from, as asked
    n_checkpoints: int | None = None  # evenly spaced over the run; None: one per epoch
    n_evals: int | None = None  # evaluations of the validation file, evenly spaced; None: one per epoch
    packing: bool = True  # padding-free: each micro-batch is one sequence with per-example position ids
    # Activations recomputed in the backward pass: decided by the hardware check from the memory estimate where the
    # request said ``auto`` (None until then, and in plans stored before it was decided: then on a GPU only).
    gradient_checkpointing: bool | None = None
    lora: LoraPlan = Field(default_factory=LoraPlan)
    reinforcement: ReinforcementPlan | None = None  # a reinforcement job's grader and sampling (GRPO)

    @model_validator(mode="after")
    def _micro_batches(self) -> TrainingPlan:
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) must divide batch_size "
                f"({self.batch_size})"
            )
        return self

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.gradient_accumulation_steps

    @property
    def sequences_per_example(self) -> int:
        """The sequences of at most ``max_seq_length`` tokens the trainer counts per training example: one
        (supervised), a pair's two sides (preference), a prompt once per sampled completion (reinforcement)."""
        if self.reinforcement is not None:
            return self.reinforcement.num_generations
        return 1 if method_info(self.method).data == "supervised" else 2

    def openai_hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }

    def openai_method(self) -> dict[str, Any]:
        rl = self.reinforcement
        return _openai_method(
            self.method,
            self.openai_hyperparameters(),
            self.beta,
            grader=rl.grader if rl else None,
            rl_hyperparameters=rl.openai_hyperparameters() if rl else None,
        )

    def training_options(self) -> dict[str, Any]:
        """``tunery.training`` as the job object shows it once resolved."""
        return {
            **self.model_dump(include=set(PLAIN_OPTIONS)),
            "warmup_ratio": None if self.warmup_steps is not None else self.warmup_ratio,
            "max_seq_length": self.max_seq_length,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "batch_tokens": self.batch_tokens,
            "n_checkpoints": self.n_checkpoints,
            "n_evals": self.n_evals,
            "packing": self.packing,
            "precision": self.precision,
            "gradient_checkpointing": "auto" if self.gradient_checkpointing is None else self.gradient_checkpointing,
            "lora": self.lora.model_dump(),
        }


def resolve_plan(
    request: PlanRequest,
    n_examples: int,
    *,
    has_validation: bool,
    cpu_only: bool,
    precision: str | None = None,
    tokens_per_example: float | None = None,
) -> TrainingPlan:
    """The one resolution of ``auto``: ``n_examples`` training examples, on a trainer that is ``cpu_only`` or not;
    ``precision`` is the one the hardware check settled on (the request's when None). ``tokens_per_example``: the
    training file's mean example (cut at ``max_seq_length``), from which ``tunery.training.batch_tokens`` resolves
    an ``auto`` batch size (OpenAI's rule when it is not known)."""
    info = method_info(request.method)
    req, t = request.hyperparameters, request.training
    n = max(1, n_examples)
    accum = t.gradient_accumulation_steps
    if t.batch_tokens is not None and tokens_per_example:
        auto_batch = hyperparams.token_budget_batch_size(t.batch_tokens, tokens_per_example)
    else:
        auto_batch = hyperparams.auto_batch_size(n, cpu_only)
    if accum > 1:  # an ``auto`` batch is a multiple of the micro-batches it splits into
        auto_batch = max(accum, auto_batch - auto_batch % accum)
    n_epochs = hyperparams.auto_n_epochs(n) if req.n_epochs in (None, "auto") else int(req.n_epochs)
    batch = auto_batch if req.batch_size in (None, "auto") else int(req.batch_size)
    batch = max(1, min(batch, n))
    multiplier = _multiplier(request)
    steps = hyperparams.total_steps(n, batch, n_epochs)
    n_ckpt = n_epochs if t.n_checkpoints == "auto" else t.n_checkpoints
    n_evals = (n_epochs if t.n_evals == "auto" else t.n_evals) if has_validation else 0
    rl = request.reinforcement
    interval = rl.hyperparameters.eval_interval if rl is not None else None
    if has_validation and isinstance(interval, int):
        n_evals = max(1, steps // interval)
    warmup_ratio = 0.0 if t.warmup_ratio is None else t.warmup_ratio
    return TrainingPlan(
        **t.model_dump(include=set(PLAIN_OPTIONS)),
        method=info.name,
        n_epochs=n_epochs,
        batch_size=batch,
        learning_rate_multiplier=multiplier,
        learning_rate=learning_rate(request),
        beta=(DEFAULT_BETA if req.beta in (None, "auto") else float(req.beta)) if info.beta else None,
        precision=precision or t.precision,  # type: ignore[arg-type]
        max_seq_length=t.requested_max_seq_length,
        warmup_ratio=0.0 if t.warmup_steps is not None else warmup_ratio,
        # Each batch splits into equal micro-batches: a batch clamped to a small file may lower it.
        gradient_accumulation_steps=hyperparams.largest_divisor_at_most(batch, accum),
        batch_tokens=t.batch_tokens,
        n_checkpoints=max(1, min(n_ckpt, steps)),
        n_evals=max(0, min(n_evals, steps)),
        packing=t.packing and info.packing,
        gradient_checkpointing=None if t.gradient_checkpointing == "auto" else t.gradient_checkpointing,
        lora=LoraPlan(
            r=t.lora.r,
            alpha=2 * t.lora.r if t.lora.alpha == "auto" else t.lora.alpha,
            dropout=t.lora.dropout,
            target_modules=t.lora.target_modules,
        ),
        reinforcement=_resolve_reinforcement(rl, steps, n_evals if has_validation else 0, cpu_only)
        if info.reinforcement
        else None,
    )


def _resolve_reinforcement(
    rl: ReinforcementRequest | None, steps: int, n_evals: int, cpu_only: bool
) -> ReinforcementPlan:
    if rl is None:
        raise ValueError("a reinforcement plan needs the job's grader (method.reinforcement)")
    hp, o = rl.hyperparameters, rl.options
    multiplier = 1.0 if hp.compute_multiplier in (None, "auto") else float(hp.compute_multiplier)
    if o.num_generations == "auto":
        generations = hyperparams.auto_num_generations(multiplier, cpu_only)
    else:
        generations = int(o.num_generations)
    n_evals = max(0, min(n_evals, steps))
    return ReinforcementPlan(
        grader=rl.grader,
        num_generations=generations,
        max_completion_length=o.max_completion_length,
        kl_coef=o.kl_coef,
        temperature=o.temperature,
        eval_interval=max(1, steps // n_evals) if n_evals else None,
        eval_samples=1 if hp.eval_samples in (None, "auto") else int(hp.eval_samples),
        compute_multiplier=multiplier,
        reasoning_effort=hp.reasoning_effort or "default",
    )


def graded_by(plan: TrainingPlan, grader: dict[str, Any]) -> TrainingPlan:
    """The plan of an evaluation given its own grader (docs/evals.md), from the plan of the model it evaluates: a
    reinforcement job's sampling with that grader instead of the job's, or for a model another method made, the
    sampling ``tunery.reinforcement`` defaults to (the answers a reinforcement job on it would sample) and one sampled
    answer a prompt."""
    rl = plan.reinforcement
    if rl is None:
        o = ReinforcementOptions()
        rl = ReinforcementPlan(
            grader=grader,
            num_generations=2,  # GRPO's group: an evaluation samples ``eval_samples`` answers, never a group
            max_completion_length=o.max_completion_length,
            kl_coef=o.kl_coef,
            temperature=o.temperature,
        )
    return plan.model_copy(update={"reinforcement": rl.model_copy(update={"grader": grader})})
