"""Models: ``/v1/models``, as OpenAI's schema has them (``Model``, ``ListModelsResponse``, ``DeleteModelResponse``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from api.protocol.base import OpenAIResponse, with_data


class Model(OpenAIResponse):
    """OpenAI's ``Model``: a base model (owned by ``tunery``), a fine-tuned model or a checkpoint model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(OpenAIResponse):
    """OpenAI's ``ListModelsResponse``: every model at once, no pagination."""

    object: Literal["list"] = "list"
    data: list[Model]

    @classmethod
    def json_of(cls, items: Sequence[bytes]) -> bytes:
        """The JSON of ``cls(data=models)`` from the models as JSON already (api/encoded.py)."""
        return with_data(cls(data=[]), items)


class ModelDeleted(OpenAIResponse):
    """OpenAI's ``DeleteModelResponse``."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool
