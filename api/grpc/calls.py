"""What every public gRPC call goes through: its key and role (the REST rule), its errors, its request id and its
metrics. Each RPC names the REST route it is the twin of (:data:`REST_TWIN`): the role a call needs is that route's,
decided by :func:`api.auth.admit`, so a role is never written twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from api.auth import Principal, admit
from api.context import AppContext, Tenant, run_read
from api.grpc.errors import as_api_error, grpc_code, status_of
from tunery import ids

T = TypeVar("T")

J = "/v1/fine_tuning/jobs"
# Every RPC and the REST route it mirrors (method, route template).
REST_TWIN: dict[str, tuple[str, str]] = {
    "ChatService/CreateChatCompletion": ("POST", "/v1/chat/completions"),
    "ChatService/StreamChatCompletion": ("POST", "/v1/chat/completions"),
    "ModelService/ListModels": ("GET", "/v1/models"),
    "ModelService/GetModel": ("GET", "/v1/models/{model:path}"),
    "ModelService/DeleteModel": ("DELETE", "/v1/models/{model:path}"),
    "FileService/UploadFile": ("POST", "/v1/files"),
    "FileService/GetFile": ("GET", "/v1/files/{file_id}"),
    "FileService/ListFiles": ("GET", "/v1/files"),
    "FileService/DeleteFile": ("DELETE", "/v1/files/{file_id}"),
    "FileService/DownloadFile": ("GET", "/v1/files/{file_id}/content"),
    "FileService/GetValidationReport": ("GET", "/v1/files/{file_id}/validation"),
    "FineTuningService/CreateJob": ("POST", J),
    "FineTuningService/DryRun": ("POST", f"{J}/dry_run"),
    "FineTuningService/GetJob": ("GET", f"{J}/{{job_id}}"),
    "FineTuningService/ListJobs": ("GET", J),
    "FineTuningService/CancelJob": ("POST", f"{J}/{{job_id}}/cancel"),
    "FineTuningService/PauseJob": ("POST", f"{J}/{{job_id}}/pause"),
    "FineTuningService/ResumeJob": ("POST", f"{J}/{{job_id}}/resume"),
    "FineTuningService/ListEvents": ("GET", f"{J}/{{job_id}}/events"),
    "FineTuningService/WatchEvents": ("GET", f"{J}/{{job_id}}/events"),
    "FineTuningService/ListCheckpoints": ("GET", f"{J}/{{job_id}}/checkpoints"),
}


class Calls:
    """Runs the RPCs of one server on the API's event loop (``ctx``'s services; their blocking work in threads)."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def _admit(self, rpc: str, authorization: str | None) -> Principal:
        method, template = REST_TWIN[rpc]
        return admit(self.ctx.settings, self.ctx.keys, authorization, method, template, {})

    async def _begin(self, rpc: str, context: grpc.aio.ServicerContext, rid: str) -> Tenant:
        context.set_trailing_metadata((("x-request-id", rid),))
        value = dict(context.invocation_metadata() or ()).get("authorization")
        authorization = value if isinstance(value, str) else None
        # A stored key is looked up in the metadata store: off the event loop.
        principal = await run_read(self.ctx, self._admit, rpc, authorization)
        return principal.tenant(self.ctx.settings)

    def _done(self, rpc: str, code: grpc.StatusCode, started: float) -> None:
        name = rpc.rpartition("/")[2]
        self.ctx.metrics.grpc_requests.labels(name, code.name).inc()
        self.ctx.metrics.grpc_seconds.labels(name).observe(time.perf_counter() - started)

    async def unary(self, rpc: str, context: grpc.aio.ServicerContext, fn: Callable[[Tenant], Awaitable[T]]) -> T:
        """Admit the call, run ``fn`` with the caller's project, answer its result or its error as a status."""
        started, code, rid = time.perf_counter(), grpc.StatusCode.OK, ids.request_id()
        try:
            return await fn(await self._begin(rpc, context, rid))
        except asyncio.CancelledError:  # the client left or its deadline passed: nothing is answered
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # every failure becomes a status; the status carries OpenAI's error
            err = as_api_error(e)
            code = grpc_code(err.status)
            await context.abort_with_status(status_of(err, rid))
            raise  # not reached: abort_with_status raises
        finally:
            self._done(rpc, code, started)

    async def stream(
        self, rpc: str, context: grpc.aio.ServicerContext, fn: Callable[[Tenant], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        """:meth:`unary` for a server stream: its messages, then its end or its error."""
        started, code, rid = time.perf_counter(), grpc.StatusCode.OK, ids.request_id()
        try:
            async for message in fn(await self._begin(rpc, context, rid)):
                yield message
        except (
            asyncio.CancelledError,
            GeneratorExit,
        ):  # the client left or its deadline passed: the stream's resources are freed
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            err = as_api_error(e)
            code = grpc_code(err.status)
            await context.abort_with_status(status_of(err, rid))
        finally:
            self._done(rpc, code, started)
