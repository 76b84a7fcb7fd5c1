"""OpenAI's protocol as Tunery speaks it: typed request and response models, one module per API family.

The layout is one package per layer, not one package per family::

    api/protocol/   request and response models (pydantic), no I/O: base.py, files.py, models.py, chat.py
    api/services/   the logic: typed requests (+ context and tenant) in, typed responses out, typed errors
    api/<family>.py the FastAPI routers: HTTP (path, query, form, multipart, SSE) -> service call

Why layers: the REST routers stay where they were (``api/files.py``, ``api/uploads.py``, ``api/models.py``,
``api/chat.py``), so ``app.py`` and the modules that import them (the jobs family imports ``api.files.get_file``)
do not move while other families are reworked; the gRPC API (a later issue) depends on ``api.protocol`` and
``api.services`` alone, never on a router; and a family added later (jobs) is one module in each of the two
packages, reusing :mod:`api.protocol.base`. vLLM's per-family packages group the same three parts by family;
here the families are small and the shared base matters more than the grouping.
"""

from api.protocol.base import (
    CursorPage,
    Error,
    ErrorResponse,
    OpenAIObject,
    OpenAIRequest,
    OpenAIResponse,
    TuneryExtension,
    omitted,
)

__all__ = [
    "CursorPage",
    "Error",
    "ErrorResponse",
    "OpenAIObject",
    "OpenAIRequest",
    "OpenAIResponse",
    "TuneryExtension",
    "omitted",
]
