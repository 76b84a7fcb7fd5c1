"""OpenAI's grader requests and answers (``/v1/fine_tuning/alpha/graders/run`` and ``/validate``); the grader objects
themselves are tunery/graders/'s, shared with the trainer.

A request's ``grader`` is taken as a JSON object and typed by :func:`tunery.graders.parse_grader`, which names the
field at fault (``grader.graders.a.operation``) in OpenAI's words; pydantic's own union errors would name its tags.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from api.protocol.base import OpenAIRequest, OpenAIResponse
from tunery.graders import GradeMetadata, Grader

GRADER_DESCRIPTION = (
    "The grader: one of OpenAI's string_check, text_similarity, python, score_model or multi objects (docs/graders.md)."
)


class ValidateGraderRequest(OpenAIRequest):
    grader: dict[str, Any] = Field(description=GRADER_DESCRIPTION)


class RunGraderRequest(OpenAIRequest):
    grader: dict[str, Any] = Field(description=GRADER_DESCRIPTION)
    model_sample: str = Field(
        description="The model sample: `{{sample.output_text}}`, and `{{sample.output_json}}` when it is JSON."
    )
    item: dict[str, Any] | None = Field(default=None, description="The dataset item: the `{{item.*}}` namespace.")


class ValidateGraderResponse(OpenAIResponse):
    """The grader as Tunery understood it."""

    grader: Grader


class RunGraderResponse(OpenAIResponse):
    """The reward (0 when an error flag is set), what happened, and a multi grader's sub-rewards."""

    reward: float
    metadata: GradeMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]
