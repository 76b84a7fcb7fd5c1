"""Graders before training (``/v1/fine_tuning/alpha/graders/run`` and ``/validate``): check a grader, and grade one
model sample against one item with it, by tunery/graders/. Nothing is stored; a failure is an
:class:`~api.errors.InvalidRequest` naming the field at fault.

A ``score_model`` grader's judge is a model this server serves to the caller's project (a base model, or an ``ft:``
model or alias the project may use: :func:`resolve_judges`, which job creation shares), asked through the serving
backend (:class:`ServingJudge`): the embedded engine or vLLM. Grading is CPU-bound (the similarity metrics), or waits
up to a python grader's time limit on its sandbox, or on the judge: it runs in a thread, off the event loop, and the
judge's generations are awaited on the loop. A ``cosine`` metric's texts are embedded by the configured embedding
model (``TUNERY_EMBEDDING_MODEL``) on the embedded engine (:class:`ServingEmbedder`), awaited the same way.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from anyio import to_thread
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import InvalidRequest, Unavailable
from api.protocol.graders import RunGraderRequest, RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse
from api.services.chat import no_engine
from api.services.models import model_ref
from serving.backend import ServingBackend
from serving.errors import EngineError, ServingUnavailable
from serving.protocol import ModelRef
from serving.sampling import SamplingParams
from tunery import graders
from tunery.graders import AnyGrader, GraderError, GraderNotRunnable, GraderObject, JudgeReply, JudgeSampling, Message
from tunery.sharing import ResolvedModel, resolve_usable

log = logging.getLogger("tunery.api")


def _unknown(value: object, where: str) -> list[str]:
    if isinstance(value, GraderObject):
        found = [f"{where}.{k}" for k in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _unknown(getattr(value, name), f"{where}.{name}")
        return found
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _unknown(v, f"{where}[{i}]")]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _unknown(v, f"{where}.{k}")]
    return []


def _parse(data: dict[str, object], request: str) -> AnyGrader:
    try:
        grader = graders.parse_grader(data)
    except GraderError as e:
        raise InvalidRequest(e.message, param=e.param, code=e.code) from None
    unknown = _unknown(grader, "grader")
    if unknown:
        log.warning("%s: accepted field(s) Tunery does not know: %s", request, ", ".join(sorted(unknown)))
    return grader


def resolve_judges(
    s: Session, ctx: AppContext, t: Tenant, grader: AnyGrader, where: str = "grader"
) -> dict[str, ResolvedModel]:
    """The judge model of each model grader (score_model, label_model) in ``grader``, by the name the grader gives:
    a model this server serves to the project; a 400 naming the grader's ``model`` (``grader.model``,
    ``method.reinforcement.grader.graders.judge.model``) for any other (unknown, another project's, a base model
    this server does not serve)."""
    bases = ctx.settings.base_model_paths()
    out: dict[str, ResolvedModel] = {}
    for at, judge in graders.model_graders(grader, where):
        found = resolve_usable(s, t.organization_id, t.project_id, judge.model, bases)
        if found is None:
            raise InvalidRequest(
                f"The judge model `{judge.model[:200]}` of '{at}' does not exist or you do not have access to it: a "
                f"model grader's model is a base model this server serves ({', '.join(bases) or 'none'}) or "
                "one of your fine-tuned models (ft:...).",
                param=f"{at}.model",
                code="model_not_found",
            )
        out[judge.model] = found
    return out


class ServingJudge:
    """The judge on the API: each conversation one chat completion of the serving backend, on the model the
    grader's name resolved to for the caller's project. :meth:`complete` is called from a grading thread; the
    generations run on the event loop ``loop`` (the embedded engine queues them on its own threads)."""

    def __init__(self, serving: ServingBackend, models: dict[str, ResolvedModel], loop: asyncio.AbstractEventLoop):
        self.serving = serving
        self.models = models
        self.loop = loop

    def complete(self, model: str, conversations: list[list[Message]], sampling: JudgeSampling) -> list[JudgeReply]:
        return asyncio.run_coroutine_threadsafe(self._all(model, conversations, sampling), self.loop).result()

    async def _all(self, model: str, conversations: list[list[Message]], sampling: JudgeSampling) -> list[JudgeReply]:
        ref = model_ref(self.models[model])
        return list(await asyncio.gather(*(self._one(ref, model, c, sampling) for c in conversations)))

    async def _one(self, ref: ModelRef, model: str, messages: list[Message], sampling: JudgeSampling) -> JudgeReply:
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            **({"seed": sampling.seed} if sampling.seed is not None else {}),
        }
        try:
            answer = await self.serving.chat_completions(ref, body, params)
        except (EngineError, ServingUnavailable) as e:
            return JudgeReply(error=e.message)
        if not isinstance(answer, dict):  # a stream, which was not asked for
            return JudgeReply(error="the serving backend answered a stream")
        usage = answer.get("usage") or {}
        return JudgeReply(
            text=str(answer["choices"][0]["message"].get("content") or ""),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


class ServingEmbedder:
    """The embedding model of the cosine metric on the API (``TUNERY_EMBEDDING_MODEL``): the serving backend's
    embeddings (the embedded engine's; tunery/embeddings.py), a text past the model's context cut to it.
    :meth:`embed` is called from a grading thread; the engine's work is awaited on the event loop ``loop``."""

    def __init__(self, serving: ServingBackend, ref: ModelRef, loop: asyncio.AbstractEventLoop):
        self.serving = serving
        self.ref = ref
        self.loop = loop

    def embed(self, texts: list[str]) -> list[list[float]]:
        done = asyncio.run_coroutine_threadsafe(self.serving.embeddings(self.ref, texts, truncate=True), self.loop)
        return done.result().vectors


def embedder(ctx: AppContext, grader: AnyGrader, loop: asyncio.AbstractEventLoop) -> ServingEmbedder | None:
    """What embeds the texts of ``grader``'s cosine metrics on the API (None when it has none): the configured
    embedding model on the embedded engine; a 400 ``grader_not_supported`` naming the metric where none is configured
    or the server serves through vLLM, a 503 where its files are missing."""
    found = graders.cosine_graders(grader)
    if not found:
        return None
    configured = ctx.settings.embedding_model_path()
    at = f"{found[0][0]}.evaluation_metric"
    if configured is None:
        graders.check_runnable(grader)  # raises: the refusal of a cosine metric without an embedding model
    assert configured is not None
    if ctx.serving is None:
        raise no_engine()
    if ctx.serving.name != "embedded":
        raise GraderNotRunnable(
            f"The cosine metric of '{found[0][0]}' embeds its texts on the embedded engine, and this server serves "
            "through vLLM: run this grader in a reinforcement job (its trainer embeds them), or on a server with "
            "TUNERY_SERVING_BACKEND=embedded.",
            at,
        )
    name, folder = configured
    if not (Path(folder) / "config.json").is_file():
        raise Unavailable(
            f"The embedding model `{name}` (TUNERY_EMBEDDING_MODEL) is configured but its files are missing on this "
            "server.",
            code="model_unavailable",
        )
    return ServingEmbedder(ctx.serving, ModelRef(base_name=name, base_path=folder), loop)


class GraderService:
    """``graders/validate`` (the grader's form) and ``graders/run`` (its reward, a score_model's judge a model the
    caller's project may use)."""

    def __init__(self, ctx: AppContext, tenant: Tenant):
        self.ctx = ctx
        self.tenant = tenant

    def validate(self, req: ValidateGraderRequest) -> ValidateGraderResponse:
        """The grader, typed, when it is well-formed: its fields, templates, formula, source and range. A cosine
        grader where no embedding model is configured (or a python one where no sandbox can be made) is well-formed
        here even though :meth:`run` refuses it; a score_model's judge model is looked up when it runs."""
        return ValidateGraderResponse(grader=_parse(req.grader, "ValidateGraderRequest"))  # type: ignore[arg-type]

    async def run(self, req: RunGraderRequest) -> RunGraderResponse:
        """The grader's reward for ``req.model_sample`` against ``req.item``, in OpenAI's shape."""
        grader = _parse(req.grader, "RunGraderRequest")
        try:
            graders.check_runnable(grader, embeddings=True)  # the embedding model is checked by embedder()
            embeds = embedder(self.ctx, grader, asyncio.get_running_loop())
        except GraderError as e:
            raise InvalidRequest(e.message, param=e.param, code=e.code) from None
        judge = None
        if graders.model_graders(grader):
            models = await to_thread.run_sync(self._judges, grader)
            if self.ctx.serving is None:
                raise no_engine()
            judge = ServingJudge(self.ctx.serving, models, asyncio.get_running_loop())

        def grade() -> graders.GradeResult:
            try:
                return graders.run_grader(grader, req.model_sample, req.item, judge=judge, embedder=embeds)
            except GraderError as e:
                raise InvalidRequest(e.message, param=e.param, code=e.code) from None

        result = await to_thread.run_sync(grade)
        if result.problems:
            log.info("grader %r: %s", grader.name[:64], "; ".join(result.problems))
        return RunGraderResponse(
            reward=result.reward,
            metadata=result.metadata,
            sub_rewards=result.sub_rewards,
            model_grader_token_usage_per_model=result.model_grader_token_usage_per_model,
        )

    def _judges(self, grader: AnyGrader) -> dict[str, ResolvedModel]:
        with self.ctx.db.session() as s:
            return resolve_judges(s, self.ctx, self.tenant, grader)
