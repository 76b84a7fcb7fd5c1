"""OpenAI's embeddings request and answer (``POST /v1/embeddings``): what the SDK's ``client.embeddings.create``
sends and reads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from api.protocol.base import Name, OpenAIRequest, OpenAIResponse

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request


class EmbeddingRequest(OpenAIRequest):
    """OpenAI's ``CreateEmbeddingRequest``: a text, texts, or token ids (of the model's own tokenizer)."""

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="The text to embed, a list of them (at most 2048), or token ids of the model's tokenizer."
    )
    model: Name
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Accepted only as the model's own width: Tunery's models do not shorten theirs."
    )
    user: str | None = None


class Embedding(OpenAIResponse):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The unit vector; base64 of little-endian float32 with base64.")


class EmbeddingUsage(OpenAIResponse):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(OpenAIResponse):
    """OpenAI's ``CreateEmbeddingResponse``."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
