"""Graders before training (``/v1/fine_tuning/alpha/graders/run`` and ``/validate``): check a grader, and grade one
model sample against one item with it, by tunery/graders/. Nothing is stored and nothing is read from the project,
so the service needs no context; a failure is an :class:`~api.errors.InvalidRequest` naming the field at fault.
CPU-bound (the similarity metrics), or waiting up to a python grader's time limit on its sandbox: run it off the
event loop.
"""

from __future__ import annotations

import logging

from api.errors import InvalidRequest
from api.protocol.graders import RunGraderRequest, RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse
from tunery import graders
from tunery.graders import AnyGrader, GraderError, GraderObject

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


def validate(req: ValidateGraderRequest) -> ValidateGraderResponse:
    """The grader, typed, when it is well-formed: its fields, templates, formula and source. A score_model or cosine
    grader (or a python one where no sandbox can be made) is well-formed here even though :func:`run` refuses it."""
    return ValidateGraderResponse(grader=_parse(req.grader, "ValidateGraderRequest"))  # type: ignore[arg-type]


def run(req: RunGraderRequest) -> RunGraderResponse:
    """The grader's reward for ``req.model_sample`` against ``req.item``, in OpenAI's shape."""
    grader = _parse(req.grader, "RunGraderRequest")
    try:
        result = graders.run_grader(grader, req.model_sample, req.item)
    except GraderError as e:
        raise InvalidRequest(e.message, param=e.param, code=e.code) from None
    if result.problems:
        log.info("grader %r: %s", grader.name[:64], "; ".join(result.problems))
    return RunGraderResponse(
        reward=result.reward,
        metadata=result.metadata,
        sub_rewards=result.sub_rewards,
        model_grader_token_usage_per_model=result.model_grader_token_usage_per_model,
    )
