"""The checks of a job request, in one place: job creation (:meth:`api.services.jobs.JobService.create`) and its dry
run (:mod:`api.services.estimates`) both start with :func:`prepare_job`, so the dry run refuses exactly what job
creation refuses.

What is checked here: the model (a base model of this server, or one of the tenant's ``ft:`` models, which must be
a LoRA or QLoRA adapter), the request's shape (metadata bounds, the method and its section, integrations, a
reinforcement grader's judge models), the
training plan it asks for (:func:`tunery.plan.check_request`: what its method supports, options that contradict
each other) and its files (the tenant's, uploaded for fine-tuning). The files' contents are checked later: by the
scheduler for a job, at once for a dry run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import InvalidRequest, NotFound
from api.protocol.jobs import CreateJob
from api.services.aliases import check_name
from api.services.files import find_file
from api.services.graders import resolve_judges
from tunery.db import File, Job
from tunery.graders import AnyGrader, GraderError, check_runnable, parse_grader
from tunery.integrations import (
    TYPES,
    IntegrationError,
    SecretName,
    check_tracking_uri,
    check_wandb_name,
    project_secret_names,
)
from tunery.jobstate import REFERENCE_PARAM, file_error_code
from tunery.methods import GRADER_PARAM
from tunery.plan import (
    DPOHyperparameters,
    Hyperparameters,
    PlanRequest,
    ReinforcementOptions,
    ReinforcementRequest,
    ReinforcementSettings,
    TrainingOptions,
    check_request,
)
from tunery.sharing import ResolvedModel, usable_model


def _check_metadata(md: dict[str, str] | None) -> None:
    if md is None:
        return
    if len(md) > 16:
        raise InvalidRequest("metadata can have at most 16 keys.", param="metadata")
    for k, v in md.items():
        if len(k) > 64:
            raise InvalidRequest(f"metadata key {k[:20]!r}... is longer than 64 characters.", param="metadata")
        if len(v) > 512:
            raise InvalidRequest(f"metadata value for {k!r} is longer than 512 characters.", param="metadata")


def _method_hyperparameters(req: CreateJob) -> Hyperparameters | None:
    method = req.method
    if method and method.supervised and method.supervised.hyperparameters:
        return method.supervised.hyperparameters
    if method and method.dpo and method.dpo.hyperparameters:
        return method.dpo.hyperparameters
    if method and method.reinforcement and method.reinforcement.hyperparameters:
        return method.reinforcement.hyperparameters
    return None


def _hyperparameters_param(req: CreateJob) -> str:
    """Where the request gave the hyperparameters a plan takes (its method's win over the top-level ones)."""
    if _method_hyperparameters(req) is not None and req.method is not None:
        return f"method.{req.method.type}.hyperparameters"
    return "hyperparameters"


def plan_request(req: CreateJob, embeddings: bool = False) -> PlanRequest:
    """The training plan the request asks for (``auto`` where it leaves a choice), after the checks of its shape:
    the method's hyperparameters win over the deprecated top-level ones; a ``reinforcement`` job's grader is one
    Tunery runs."""
    method_type = req.method.type if req.method else "supervised"
    trainer = req.tunery.method.trainer if req.tunery and req.tunery.method else None
    rl_options = req.tunery.reinforcement if req.tunery else None
    for other in ("supervised", "dpo", "reinforcement"):
        if req.method and other != method_type and getattr(req.method, other) is not None:
            raise InvalidRequest(
                f"method.{other} is given, but method.type is {method_type!r}: give the section of that method.",
                param=f"method.{other}",
                code="invalid_method",
            )
    if trainer is not None and method_type != "dpo":
        raise InvalidRequest(
            f"tunery.method.trainer selects a preference trainer, so it needs method.type 'dpo' (got {method_type!r}).",
            param="tunery.method.trainer",
            code="invalid_method",
        )
    if rl_options is not None and method_type != "reinforcement":
        raise InvalidRequest(
            f"tunery.reinforcement sets the sampling of a reinforcement job (method.type {method_type!r}).",
            param="tunery.reinforcement",
            code="invalid_method",
        )
    chosen = _method_hyperparameters(req) or req.hyperparameters or Hyperparameters()
    return PlanRequest(
        method=PlanRequest.from_job_fields({"type": method_type}, None, None, trainer).method,
        hyperparameters=DPOHyperparameters(**chosen.model_dump(include=set(DPOHyperparameters.model_fields))),
        training=req.tunery.training if req.tunery else TrainingOptions(),
        reinforcement=_reinforcement(req, rl_options, embeddings) if method_type == "reinforcement" else None,
    )


def _reinforcement(req: CreateJob, options: ReinforcementOptions | None, embeddings: bool) -> ReinforcementRequest:
    """A reinforcement job's grader, checked as ``graders/validate`` checks one and runnable here (``embeddings``:
    an embedding model is configured, for a cosine metric), and its settings."""
    section = req.method.reinforcement if req.method else None
    if section is None:
        raise InvalidRequest(
            "method.reinforcement is required when method.type is 'reinforcement': it holds the grader.",
            param="method.reinforcement",
            code="invalid_method",
        )
    if section.response_format is not None:
        raise InvalidRequest(
            "method.reinforcement.response_format (structured outputs of the sampled answers) is not supported.",
            param="method.reinforcement.response_format",
            code="unsupported_method",
        )
    checked_grader(section.grader, GRADER_PARAM, embeddings)
    hp = section.hyperparameters
    return ReinforcementRequest(
        grader=section.grader,
        hyperparameters=hp.settings() if hp is not None else ReinforcementSettings(),
        options=options or ReinforcementOptions(),
    )


def checked_grader(data: dict[str, Any], where: str, embeddings: bool) -> AnyGrader:
    """A grader given with a request (a reinforcement job's, an evaluation's), checked as ``graders/validate``
    checks one and runnable on this server (``embeddings``: an embedding model is configured, for a cosine metric);
    a 400 naming the field at fault (under ``where``) otherwise."""
    try:
        grader = parse_grader(data, where)
        check_runnable(grader, where, embeddings=embeddings)
    except GraderError as e:
        raise InvalidRequest(e.message, param=e.param, code=e.code) from None
    return grader


def check_file(s: Session, t: Tenant, file_id: str, param: str) -> File:
    """One of the tenant's files, uploaded for fine-tuning and not refused by its validation; a 400 naming
    ``param`` otherwise."""
    try:
        f = find_file(s, t, file_id)
    except NotFound:
        raise InvalidRequest(
            f"Invalid file ID: {file_id}. No such file.", param=param, code="invalid_file_id"
        ) from None
    if f.purpose != "fine-tune":
        raise InvalidRequest(
            f"File {file_id} has purpose {f.purpose!r}; fine-tuning needs a file uploaded with purpose 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )
    if f.status == "error":
        # Validation at upload already refused it: a job on it could only fail (docs/validation.md).
        raise InvalidRequest(
            f"File {file_id} is invalid: {f.status_details or 'it failed validation'}",
            param=param,
            code=file_error_code(param).value,
        )
    return f


def _parent_base_model(s: Session, t: Tenant, req: CreateJob, base_models: dict[str, str]) -> str:
    """The base model of a job whose ``model`` is a fine-tuned model (``ft:...`` or ``ft:...:ckpt-step-N``): training
    continues from that model's adapter, on its base model (docs/adapters.md)."""
    row = usable_model(s, t.organization_id, t.project_id, req.model)  # its own, or shared with it
    if row is None or row.base_model not in base_models:
        raise InvalidRequest(
            f"Model {req.model!r} does not exist or you do not have access to it.",
            param="model",
            code="model_not_available",
        )
    parent = s.scalar(select(Job).where(Job.id == row.job_id))
    parent_training = ((parent.extensions or {}).get("tunery") or {}).get("training") or {} if parent else {}
    if parent_training.get("adapter") == "full":
        raise InvalidRequest(
            f"Model {req.model!r} was fully fine-tuned; only LoRA and QLoRA models can be fine-tuned further.",
            param="model",
            code="model_not_available",
        )
    adapter = req.tunery.training.adapter if req.tunery else "lora"
    if adapter == "full":
        raise InvalidRequest(
            f"Model {req.model!r} is a LoRA adapter: fine-tuning it continues that adapter, so the adapter must be "
            "'lora' or 'qlora', not 'full'.",
            param="tunery.training.adapter",
        )
    return row.base_model


def check_integrations(s: Session, ctx: AppContext, t: Tenant, req: CreateJob) -> None:
    """The request's ``integrations`` (docs/integrations.md): each of a type Tunery runs (``wandb``, ``mlflow``), at
    most one of each, with the section of its type and no other; W&B names W&B accepts; an MLflow tracking URI a
    trainer may reach (:func:`tunery.integrations.check_tracking_uri`); and, where trainers run W&B online, the
    project's WANDB_API_KEY secret."""
    seen: set[str] = set()
    try:
        for i, item in enumerate(req.integrations or ()):
            where = f"integrations[{i}]"
            if item.type not in TYPES:
                raise IntegrationError(
                    f"Integration type {item.type[:40]!r} is not supported: Tunery runs 'wandb' (Weights & Biases) and "
                    "'mlflow' (an MLflow tracking server).",
                    f"{where}.type",
                    "unsupported_integration",
                )
            if item.type in seen:
                raise IntegrationError(f"A job has at most one {item.type!r} integration.", where)
            seen.add(item.type)
            for other in TYPES:
                if other != item.type and getattr(item, other) is not None:
                    raise IntegrationError(
                        f"{where}.{other} is given, but {where}.type is {item.type!r}: give the section of that type.",
                        f"{where}.{other}",
                    )
            if item.type == "wandb":
                if item.wandb is None:
                    raise IntegrationError(f"Missing required parameter: '{where}.wandb'.", f"{where}.wandb")
                check_wandb_name(item.wandb.project, f"{where}.wandb.project")
                check_wandb_name(item.wandb.entity, f"{where}.wandb.entity")
                if ctx.settings.wandb_mode == "online" and SecretName.WANDB_API_KEY not in project_secret_names(
                    s, t.organization_id, t.project_id
                ):
                    raise IntegrationError(
                        "The W&B integration needs the project's W&B API key: its owner sets it with "
                        "POST /v1/tunery/secrets/WANDB_API_KEY (docs/integrations.md).",
                        "integrations",
                        "missing_integration_secret",
                    )
            else:
                if item.mlflow is None:
                    raise IntegrationError(f"Missing required parameter: '{where}.mlflow'.", f"{where}.mlflow")
                check_tracking_uri(
                    item.mlflow.tracking_uri, f"{where}.mlflow.tracking_uri", ctx.settings.integrations_allow_private
                )
    except IntegrationError as e:
        raise InvalidRequest(e.message, param=e.param, code=e.code) from None


def job_integrations(req: CreateJob, job_id: str) -> list[dict[str, Any]]:
    """The integrations a job stores and its object echoes (checked: :func:`check_integrations`): each section as
    given, unknown fields left out, a W&B run's id (the job's id) added."""
    out: list[dict[str, Any]] = []
    for item in req.integrations or ():
        if item.type == "wandb" and item.wandb is not None:
            w = item.wandb
            wandb = {"project": w.project, "name": w.name, "entity": w.entity, "tags": list(w.tags or [])}
            out.append({"type": "wandb", "wandb": {**wandb, "run_id": job_id}})
        elif item.type == "mlflow" and item.mlflow is not None:
            out.append({"type": "mlflow", "mlflow": item.mlflow.model_dump()})
    return out


@dataclass
class PreparedJob:
    """A job request that passed every check job creation and the dry run share."""

    req: CreateJob
    base_model: str  # the model's, or for an ft: model its base model's
    request: PlanRequest
    judges: dict[str, ResolvedModel] = field(default_factory=dict)  # a reinforcement grader's judges, by name


def prepare_job(s: Session, ctx: AppContext, t: Tenant, req: CreateJob) -> PreparedJob:
    """The checks of ``POST /v1/fine_tuning/jobs`` and of its dry run; InvalidRequest names the first failure."""
    base_models = ctx.settings.base_model_paths()
    if req.model not in base_models and not req.model.startswith("ft:"):
        available = ", ".join(base_models) or "none configured"
        raise InvalidRequest(
            f"Model {req.model!r} is not available for fine-tuning. Available base models: {available}, or one of "
            "your fine-tuned models (ft:...).",
            param="model",
            code="model_not_available",
        )
    _check_metadata(req.metadata)
    check_integrations(s, ctx, t, req)
    request = plan_request(req, embeddings=ctx.settings.embedding_model_path() is not None)
    judges: dict[str, ResolvedModel] = {}
    if request.reinforcement is not None:  # a score_model's judge: a model this server serves to the project
        grader = parse_grader(request.reinforcement.grader, GRADER_PARAM)
        judges = resolve_judges(s, ctx, t, grader, GRADER_PARAM)
    mix = req.tunery.data.mix if req.tunery else None
    problem = check_request(
        request,
        has_validation=bool(req.validation_file),
        continuing=req.model not in base_models,
        data_mix=mix is not None,
        explicit=frozenset(req.tunery.training.model_fields_set) if req.tunery else frozenset(),
        hyperparameters_param=_hyperparameters_param(req),
    )
    if problem is not None:
        raise InvalidRequest(problem.message, param=problem.param, code=problem.code)
    base_model = req.model if req.model in base_models else _parent_base_model(s, t, req, base_models)
    check_file(s, t, req.training_file, "training_file")
    if req.validation_file:
        check_file(s, t, req.validation_file, "validation_file")
    if mix is not None:
        check_file(s, t, mix.file, "tunery.data.mix.file")
    _check_promotion(req, base_models)
    reference = req.tunery.eval.reference_file if req.tunery and req.tunery.eval else None
    if reference is not None:
        check_file(s, t, reference, REFERENCE_PARAM)
    return PreparedJob(req, base_model, request, judges)


def _check_promotion(req: CreateJob, base_models: set[str] | dict[str, Any]) -> None:
    """``tunery.eval.promote_to_alias`` names a valid alias and comes with the gate its model must pass."""
    options = req.tunery.eval if req.tunery else None
    if options is None or options.promote_to_alias is None:
        return
    param = "tunery.eval.promote_to_alias"
    if options.gate is None or not options.enabled:
        raise InvalidRequest(
            "tunery.eval.promote_to_alias promotes a model that passed the job's eval gate: set tunery.eval.gate "
            "(with eval reports enabled).",
            param=param,
            code="invalid_value",
        )
    try:
        check_name(options.promote_to_alias, base_models)
    except InvalidRequest as e:
        raise InvalidRequest(e.message, param=param, code=e.code) from None
