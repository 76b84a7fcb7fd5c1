"""Grading a model sample against an item: :func:`run_grader` (one) and :func:`run_graders` (a batch, each python
grader started once), with OpenAI's result and error flags."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunery import sandbox
from tunery.embeddings import cosine

from .errors import MAX_TEXT_CHARS, MAX_WORDS_QUADRATIC, GraderNotRunnable
from .formulas import parse_formula
from .judges import (
    Embedder,
    Judge,
    JudgeReply,
    ModelGrader,
    clamp,
    conversation,
    model_graders,
    parse_label,
    parse_score,
    sampling,
    score_range,
)
from .judges import not_runnable as _judge_not_runnable
from .metrics import similarity, string_check
from .objects import (
    AnyGrader,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from .templates import _Context, _Unfilled, render

log = logging.getLogger("tunery.graders")

# ---- grading ------------------------------------------------------------------------------------------------------
ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_runtime_error",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
)


class GradeErrors(BaseModel):
    """OpenAI's ``metadata.errors`` of a run: every flag, false unless that failure happened."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None

    def any(self) -> bool:
        return any(getattr(self, f) for f in ERROR_FLAGS)

    def merge(self, other: GradeErrors) -> None:
        for f in ERROR_FLAGS:
            if getattr(other, f):
                setattr(self, f, True)


class GradeMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    name: str
    type: str
    errors: GradeErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None = None
    sampled_model_name: str | None = None


class GradeResult(BaseModel):
    """OpenAI's ``RunGraderResponse``: the reward (0 when any error flag is set), what happened, the sub-rewards of a
    multi grader. ``problems``: the messages behind the flags, for logs (not part of OpenAI's answer)."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    reward: float
    metadata: GradeMetadata
    sub_rewards: dict[str, Any] = {}
    model_grader_token_usage_per_model: dict[str, Any] = {}
    problems: list[str] = Field(default=[], exclude=True)


def _not_runnable(grader: AnyGrader, where: str, embeddings: bool) -> GraderNotRunnable | None:
    if isinstance(grader, PythonGrader):
        missing = sandbox.unavailable()
        if missing:
            return _no_sandbox(missing, where)
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return _judge_not_runnable(grader, where)
    if isinstance(grader, TextSimilarityGrader) and grader.evaluation_metric == "cosine" and not embeddings:
        return GraderNotRunnable(
            f"The cosine metric of '{where}' needs an embedding model, and this server has none configured "
            "(TUNERY_EMBEDDING_MODEL): use another evaluation_metric (fuzzy_match, bleu, gleu, meteor, "
            "rouge_1..rouge_5, rouge_l).",
            f"{where}.evaluation_metric",
        )
    if isinstance(grader, MultiGrader):
        for name, sub in grader.named().items():
            sub_where = f"{where}.graders" if not isinstance(grader.graders, dict) else f"{where}.graders.{name}"
            refused = _not_runnable(sub, sub_where, embeddings)
            if refused:
                return refused
    return None


def _no_sandbox(missing: str, where: str) -> GraderNotRunnable:
    return GraderNotRunnable(
        f"The python grader cannot run on this server: it runs only in an isolated sandbox (no network, no files, "
        f"CPU, memory and time limits), and {missing}. '{where}' is well-formed, but cannot run.",
        f"{where}.type",
    )


def check_runnable(grader: AnyGrader, where: str = "grader", embeddings: bool = False) -> None:
    """Raise :class:`GraderNotRunnable` for a grader (or a sub-grader) Tunery does not run; ``embeddings``: whether
    an embedding model is at hand (a ``cosine`` text_similarity needs one)."""
    refused = _not_runnable(grader, where, embeddings)
    if refused:
        raise refused


def cosine_graders(grader: AnyGrader, where: str = "grader") -> list[tuple[str, TextSimilarityGrader]]:
    """The text_similarity graders of ``grader`` (itself, or a multi grader's sub-graders) whose metric is
    ``cosine``, with where each is: what needs the embedding model."""
    if isinstance(grader, TextSimilarityGrader):
        return [(where, grader)] if grader.evaluation_metric == "cosine" else []
    if isinstance(grader, MultiGrader):
        out = []
        for name, sub in grader.named().items():
            sub_where = f"{where}.graders" if not isinstance(grader.graders, dict) else f"{where}.graders.{name}"
            out += cosine_graders(sub, sub_where)
        return out
    return []


def run_grader(
    grader: AnyGrader,
    model_sample: str,
    item: Any = None,
    where: str = "grader",
    limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
    judge: Judge | None = None,
    embedder: Embedder | None = None,
) -> GradeResult:
    """Grade ``model_sample`` against ``item`` with a checked grader (:func:`parse_grader`). What depends on the
    sample or the item (a reference it lacks, a sample that is not JSON, a formula without a value, a python grader
    that fails, a judge's reply that is no number) is an error flag and a reward of 0 (a score_model's: its range's
    minimum); a grader Tunery does not run is a :class:`GraderNotRunnable`. ``limits``: those of a python grader's
    sandbox, for each python grader in it; ``judge``: what answers its model graders (score_model, label_model);
    ``embedder``: the embedding model of its cosine metrics."""
    check_runnable(grader, where, embeddings=embedder is not None)
    started = time.perf_counter()
    ctx = _Context(model_sample, {} if item is None else item)
    _judge_all(grader, [ctx], judge, where)
    _embed_all(grader, [ctx], embedder, where)
    return _grade(grader, ctx, where, limits, started)


def run_graders(
    grader: AnyGrader,
    samples: list[str],
    items: list[Any],
    where: str = "grader",
    limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
    judge: Judge | None = None,
    embedder: Embedder | None = None,
) -> list[GradeResult]:
    """:func:`run_grader` of each sample against its item (a reinforcement step's completions): the same results,
    with each python grader in ``grader`` run once for all of them, in one sandbox (its start paid once), and each
    model grader's judge asked once for all of them (a batch), and the embedding model once for all the texts of its
    cosine metrics."""
    check_runnable(grader, where, embeddings=embedder is not None)
    if len(samples) != len(items):
        raise ValueError(f"{len(samples)} samples for {len(items)} items")
    items = [{} if item is None else item for item in items]
    pythons = [grader] if isinstance(grader, PythonGrader) else []
    if isinstance(grader, MultiGrader):
        pythons = [g for g in grader.named().values() if isinstance(g, PythonGrader)]
    batches: dict[int, list[sandbox.Outcome]] = {}
    for python in pythons:
        pairs = [(python_sample(s), item) for s, item in zip(samples, items, strict=True)]
        try:
            batches[id(python)] = sandbox.run_python_batch(python.source, pairs, limits)
        except sandbox.SandboxUnavailable as e:
            raise _no_sandbox(str(e), where) from None
    contexts = [
        _Context(s, item, {k: v[i] for k, v in batches.items()})
        for i, (s, item) in enumerate(zip(samples, items, strict=True))
    ]
    _judge_all(grader, contexts, judge, where)
    _embed_all(grader, contexts, embedder, where)
    return [_grade(grader, ctx, where, limits) for ctx in contexts]


def pass_threshold(grader: AnyGrader) -> float | None:
    """The reward at or above which an answer passes (an eval report's pass rate): the grader's own
    ``pass_threshold`` (a field OpenAI's eval graders carry, kept as sent), else 1 for a string_check (it gives 1 or
    0); None where the grader says nothing of passing."""
    value = getattr(grader, "pass_threshold", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 1.0 if isinstance(grader, StringCheckGrader) else None


def _judge_all(grader: AnyGrader, contexts: list[_Context], judge: Judge | None, where: str) -> None:
    """Ask the judge of each model grader in ``grader`` for the replies of all the samples at once; a sample
    whose messages cannot be filled is not sent (its grading flags why)."""
    for at, g in model_graders(grader, where):
        if judge is None:
            raise GraderNotRunnable(
                f"The {g.type} grader '{at}' needs a judge model, and none is at hand here.", f"{at}.model"
            )
        conversations, who = [], []
        for i, ctx in enumerate(contexts):
            try:
                conversations.append(conversation(g, ctx, at))
                who.append(i)
            except _Unfilled:
                continue
        if not conversations:
            continue
        try:
            replies = judge.complete(g.model, conversations, sampling(g))
            if len(replies) != len(conversations):
                raise RuntimeError(f"{len(replies)} replies to {len(conversations)} conversations")
        except Exception as e:  # the judge's own failure: each sample's model_grader_server_error, not a crash
            log.exception("the judge %s failed", g.model[:64])
            replies = [JudgeReply(error=f"the judge failed: {e}")] * len(conversations)
        for i, reply in zip(who, replies, strict=True):
            contexts[i].judged[id(g)] = reply


def _embed_all(grader: AnyGrader, contexts: list[_Context], embedder: Embedder | None, where: str) -> None:
    """The cosine similarity of each cosine metric's two texts, for every sample, from one call of the embedding
    model (each distinct text embedded once); a sample whose texts cannot be filled, or are too long, is not sent
    (its grading flags why), and a failure of the model is each sample's error."""
    found = cosine_graders(grader, where)
    if not found:
        return
    if embedder is None:
        raise GraderNotRunnable(
            f"The cosine metric of '{found[0][0]}' needs an embedding model, and none is at hand here.",
            f"{found[0][0]}.evaluation_metric",
        )
    pairs: list[tuple[_Context, int, str, str]] = []
    for at, g in found:
        for ctx in contexts:
            try:
                text, reference = render(g.input, ctx, f"{at}.input"), render(g.reference, ctx, f"{at}.reference")
            except _Unfilled:
                continue
            if max(len(text), len(reference)) <= MAX_TEXT_CHARS:
                pairs.append((ctx, id(g), text, reference))
    texts = list(dict.fromkeys(t for _, _, a, b in pairs for t in (a, b)))
    if not texts:
        return
    try:
        vectors = embedder.embed(texts)
        if len(vectors) != len(texts):
            raise RuntimeError(f"{len(vectors)} embeddings of {len(texts)} texts")
    except Exception as e:  # the model's own failure: each sample's other_error, not a crash
        log.exception("the embedding model failed")
        for ctx, key, _, _ in pairs:
            ctx.embedded[key] = f"the embedding model failed: {e}"
        return
    by_text = dict(zip(texts, vectors, strict=True))
    for ctx, key, text, reference in pairs:
        ctx.embedded[key] = cosine(by_text[text], by_text[reference])


def _grade(
    grader: AnyGrader, ctx: _Context, where: str, limits: sandbox.Limits, started: float | None = None
) -> GradeResult:
    started = time.perf_counter() if started is None else started  # a judge's time counts, when it judged one sample
    errors = GradeErrors()
    problems: list[str] = []
    sub_rewards: dict[str, Any] = {}
    usage: dict[str, dict[str, int]] = {}  # the judges' tokens, by model
    if isinstance(grader, MultiGrader):
        named = grader.named()
        values: dict[str, float] = {}
        for name, sub in named.items():
            sub_where = f"{where}.graders" if not isinstance(grader.graders, dict) else f"{where}.graders.{name}"
            values[name] = _score(sub, ctx, sub_where, errors, problems, limits, usage)
        sub_rewards = dict(values)
        reward = 0.0
        if not errors.any():
            formula = parse_formula(grader.calculate_output, set(named), f"{where}.calculate_output")
            try:
                reward = formula.evaluate(values)
            except (ArithmeticError, ValueError) as e:
                errors.other_error = True
                problems.append(f"{where}.calculate_output has no value: {e}")
    else:
        reward = _score(grader, ctx, where, errors, problems, limits, usage)
    if errors.any():  # a score_model's floor is its range's minimum
        reward = score_range(grader)[0] if isinstance(grader, ScoreModelGrader) else 0.0
    metadata = GradeMetadata(
        name=grader.name,
        type=grader.type,
        errors=errors,
        execution_time=time.perf_counter() - started,
        scores=dict(sub_rewards),
        token_usage=sum(u["total_tokens"] for u in usage.values()) if usage else None,
        sampled_model_name=next(iter(usage), None),
    )
    return GradeResult(
        reward=reward,
        metadata=metadata,
        sub_rewards=sub_rewards,
        model_grader_token_usage_per_model=usage,
        problems=problems,
    )


def _score(
    grader: AnyGrader,
    ctx: _Context,
    where: str,
    errors: GradeErrors,
    problems: list[str],
    limits: sandbox.Limits,
    usage: dict[str, dict[str, int]],
) -> float:
    if isinstance(grader, PythonGrader):
        return _run_python(grader, ctx, where, errors, problems, limits)
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return _judged(grader, ctx, where, errors, problems, usage)
    assert isinstance(grader, StringCheckGrader | TextSimilarityGrader)
    try:
        text = render(grader.input, ctx, f"{where}.input")
        reference = render(grader.reference, ctx, f"{where}.reference")
    except _Unfilled as e:
        setattr(errors, e.flag, True)
        problems.append(f"{where}: {e}")
        return 0.0
    if isinstance(grader, StringCheckGrader):
        return string_check(text, reference, grader.operation)
    if max(len(text), len(reference)) > MAX_TEXT_CHARS:
        errors.truncated_observation_error = True
        problems.append(f"{where}: a text is longer than {MAX_TEXT_CHARS} characters")
        return 0.0
    if grader.evaluation_metric in ("rouge_l", "meteor") and max(len(text.split()), len(reference.split())) > (
        MAX_WORDS_QUADRATIC
    ):
        errors.truncated_observation_error = True
        problems.append(f"{where}: {grader.evaluation_metric} takes at most {MAX_WORDS_QUADRATIC} words a text")
        return 0.0
    if grader.evaluation_metric == "cosine":
        embedded = ctx.embedded.get(id(grader), "the embedding model gave no embedding")
        if isinstance(embedded, str):
            errors.other_error = True
            problems.append(f"{where}: {embedded}")
            return 0.0
        return embedded
    return similarity(text, reference, grader.evaluation_metric)


def python_sample(model_sample: str) -> dict[str, Any]:
    """OpenAI's ``sample`` of a python grader, for a model sample that is text: ``output_json`` is None unless the text
    is JSON; no tool calls; one choice, the assistant's message."""
    try:
        output_json = json.loads(model_sample)
    except (ValueError, RecursionError):
        output_json = None
    message = {"role": "assistant", "content": model_sample}
    return {
        "output_text": model_sample,
        "output_json": output_json,
        "output_tools": [],
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def _run_python(
    grader: PythonGrader, ctx: _Context, where: str, errors: GradeErrors, problems: list[str], limits: sandbox.Limits
) -> float:
    outcome = ctx.python.get(id(grader))
    if outcome is None:
        try:
            outcome = sandbox.run_python(grader.source, python_sample(ctx.sample), ctx.item, limits)
        except sandbox.SandboxUnavailable as e:
            raise _no_sandbox(str(e), where) from None
    if outcome.reward is not None:
        return outcome.reward
    if outcome.server_error is not None:
        errors.python_grader_server_error = True
        errors.python_grader_server_error_type = "sandbox_error"
        problems.append(f"{where}: {outcome.server_error}")
        return 0.0
    details = outcome.error or "grade() failed"
    errors.python_grader_runtime_error = True
    named = f"{grader.name}: {details}" if errors.python_grader_runtime_error_details else details
    errors.python_grader_runtime_error_details = "\n".join(
        d for d in (errors.python_grader_runtime_error_details, named) if d
    )[-sandbox.MAX_DETAILS_CHARS :]
    problems.append(f"{where}: {details}")
    return 0.0


def _judged(
    grader: ModelGrader,
    ctx: _Context,
    where: str,
    errors: GradeErrors,
    problems: list[str],
    usage: dict[str, dict[str, int]],
) -> float:
    """A model grader's score: its judge's reply (asked by :func:`_judge_all`) read as a number clamped into a
    score_model's range, or as a label_model's label (1 when it is a passing one, else 0); the range's minimum (0
    for a label_model) with a flag when the reply is neither."""
    low, high = score_range(grader) if isinstance(grader, ScoreModelGrader) else (0.0, 1.0)
    reply = ctx.judged.get(id(grader))
    if reply is None:
        try:
            conversation(grader, ctx, where)
        except _Unfilled as e:
            setattr(errors, e.flag, True)
            problems.append(f"{where}: {e}")
            return low
        reply = JudgeReply(error="the judge gave no reply")
    if reply.prompt_tokens or reply.completion_tokens:
        used = usage.setdefault(
            grader.model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0}
        )
        used["prompt_tokens"] += reply.prompt_tokens
        used["completion_tokens"] += reply.completion_tokens
        used["total_tokens"] += reply.prompt_tokens + reply.completion_tokens
    if reply.error is not None or reply.text is None:
        errors.model_grader_server_error = True
        details = f"{grader.name}: {reply.error}"
        errors.model_grader_server_error_details = "\n".join(
            d for d in (errors.model_grader_server_error_details, details) if d
        )[-sandbox.MAX_DETAILS_CHARS :]
        problems.append(f"{where}: {reply.error}")
        return low
    try:
        if isinstance(grader, LabelModelGrader):
            return float(parse_label(reply.text, grader.labels) in grader.passing_labels)
        score = parse_score(reply.text)
    except ValueError as e:
        errors.model_grader_parse_error = True
        problems.append(f"{where}: {e}: {reply.text[:200]!r}")
        return low
    if not low <= score <= high:
        problems.append(f"{where}: the judge's score {score:g} is outside its range [{low:g}, {high:g}]: clamped")
    return clamp(score, low, high)
