"""``/v1/chat/completions`` and ``/v1/completions`` over HTTP: a JSON body in; a JSON object, or a stream of
server-sent events, out. api/services/chat.py does the rest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from api.auth import request_tenant
from api.context import get_ctx
from api.errors import ERROR_RESPONSES
from api.protocol.chat import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from api.routing import API_PREFIX
from api.services.chat import ChatService, EventStream

router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)


async def chat_service(request: Request) -> ChatService:
    """The caller's completions. On the event loop, with ``get_ctx`` and ``tenant`` called here: none does I/O, and
    FastAPI would run each as a ``def`` dependency in the thread pool, a trip there and back per request."""
    ctx = get_ctx(request)
    return ChatService(ctx, request_tenant(request, ctx))


def _streamed(kind: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of a 200 that is JSON, or with ``stream: true`` server-sent events."""
    events = {
        "schema": {
            "type": "string",
            "description": f"Server-sent events: `data: <{kind} JSON>` lines, ending with `data: [DONE]`.",
        }
    }
    return {200: {"content": {"text/event-stream": events}}}


def _respond(answer: ChatCompletion | Completion | EventStream) -> Any:
    if isinstance(answer, ChatCompletion | Completion):
        return answer
    return StreamingResponse(answer, media_type="text/event-stream", headers={"cache-control": "no-cache"})


@router.post("/chat/completions", response_model=ChatCompletion, responses=_streamed("chat.completion.chunk"))
async def chat_completions(req: ChatCompletionRequest, svc: ChatService = Depends(chat_service)) -> Any:
    return _respond(await svc.chat_completion(req))


@router.post("/completions", response_model=Completion, responses=_streamed("text_completion"))
async def completions(req: CompletionRequest, svc: ChatService = Depends(chat_service)) -> Any:
    return _respond(await svc.completion(req))
