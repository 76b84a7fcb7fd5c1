"""OpenAI's protocol as Tunery speaks it: typed request and response models, one module per API family.

The layout is one package per layer, not one package per family::

    api/protocol/   request and response models (pydantic), no I/O: base.py, files.py, models.py, chat.py, jobs.py
    api/services/   the logic: typed requests (+ context and tenant) in, typed responses out, typed errors
    api/<family>.py the FastAPI routers: HTTP (path, query, form, multipart, SSE) -> service call

Why layers: the REST routers stay where they were (``api/files.py``, ``api/uploads.py``, ``api/models.py``,
``api/chat.py``, ``api/jobs.py``, ``api/pause.py``, ``api/estimates.py``), so ``app.py`` does not move while a
family is reworked; the gRPC API (a later issue) depends on ``api.protocol`` and ``api.services`` alone, never on a
router; and a family is one module in each of the two packages (the jobs family: ``protocol/jobs.py``, and
``services/jobs.py`` with the checks it shares with its dry run, ``services/prepare.py``, and the dry run,
``services/estimates.py``), reusing :mod:`api.protocol.base`. vLLM's per-family packages group the same three parts
by family; here the families are small and the shared base matters more than the grouping.
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
