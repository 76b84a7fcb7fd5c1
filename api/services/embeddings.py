"""``POST /v1/embeddings``: each input's embedding by a model the caller's project may use (a base model, or its
``ft:`` model with its adapter active), from the serving backend: the embedded engine embeds with
:func:`tunery.embeddings.embed`, the function the graders' cosine metric uses; the vLLM backend refuses."""

from __future__ import annotations

import base64
import struct

from anyio import to_thread

from api.context import AppContext, Tenant
from api.errors import InvalidRequest
from api.protocol.embeddings import MAX_INPUTS, Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from api.services.chat import no_engine, serving_error
from api.services.models import model_ref, resolve
from serving.errors import EngineError, ServingUnavailable


def inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str] | list[list[int]]:
    """The request's inputs as a list of texts or of token-id lists; a 400 naming ``input`` for none, an empty
    one, or more than OpenAI's limit."""
    if isinstance(value, str):
        value = [value]
    elif value and isinstance(value[0], int):
        value = [value]  # type: ignore[list-item]
    if not value:
        raise InvalidRequest("'input' must hold at least one text.", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"'input' holds {len(value)} inputs; at most {MAX_INPUTS} are allowed.", param="input")
    for i, one in enumerate(value):
        if not one:
            raise InvalidRequest(f"'input[{i}]' is empty: each input must be a non-empty text.", param="input")
        if isinstance(one, list) and any(t < 0 for t in one):
            raise InvalidRequest(f"'input[{i}]' holds a negative token id.", param="input")
    return value  # type: ignore[return-value]


def encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as OpenAI sends it: floats, or base64 of little-endian float32 (what the SDK decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


class EmbeddingService:
    def __init__(self, ctx: AppContext, tenant: Tenant):
        self.ctx = ctx
        self.tenant = tenant

    async def create(self, req: EmbeddingRequest) -> EmbeddingList:
        texts = inputs(req.input)
        resolved = await to_thread.run_sync(resolve, self.ctx, self.tenant, req.model)
        if self.ctx.serving is None:
            raise no_engine()
        try:
            found = await self.ctx.serving.embeddings(model_ref(resolved), texts)
        except (EngineError, ServingUnavailable) as e:
            raise serving_error(e) from None
        width = len(found.vectors[0])
        if req.dimensions is not None and req.dimensions != width:
            raise InvalidRequest(
                f"This model does not support specifying dimensions: its embeddings have {width} (mean-pooled hidden "
                "states, which cannot be shortened without changing their meaning); leave 'dimensions' out.",
                param="dimensions",
            )
        tokens = sum(found.tokens)
        return EmbeddingList(
            data=[Embedding(index=i, embedding=encoded(v, req.encoding_format)) for i, v in enumerate(found.vectors)],
            model=req.model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
