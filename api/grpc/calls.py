"""What every public gRPC call goes through: its key and role (the REST rule), its errors, its request id and its
metrics. Each RPC names the REST route it is the twin of (:data:`REST_TWIN`): the role a call needs is that route's,
decided by :func:`api.auth.admit`, so a role is never written twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from api.auth import Principal
from api.context import AppContext, run_read
from api.grpc.errors import as_api_error, grpc_code, status_of
from api.limits import admission
from tunery import ids

T = TypeVar("T")
F = TypeVar("F")

J = "/v1/fine_tuning/jobs"
AL = "/v1/tunery/aliases"
GR = "/v1/fine_tuning/alpha/graders"
EV = "/v1/tunery/evaluations"
EX = "/v1/tunery/exports"
WH = "/v1/webhook_endpoints"
SE = "/v1/tunery/secrets"
# Every RPC and the REST route it mirrors (method, route template).
REST_TWIN: dict[str, tuple[str, str]] = {
    "ChatService/CreateChatCompletion": ("POST", "/v1/chat/completions"),
    "ChatService/StreamChatCompletion": ("POST", "/v1/chat/completions"),
    "ChatService/CreateCompletion": ("POST", "/v1/completions"),
    "ChatService/StreamCompletion": ("POST", "/v1/completions"),
    "ModelService/ListModels": ("GET", "/v1/models"),
    "ModelService/GetModel": ("GET", "/v1/models/{model:path}"),
    "ModelService/DeleteModel": ("DELETE", "/v1/models/{model:path}"),
    "ModelService/DownloadArchive": ("GET", "/v1/tunery/models/{model:path}/archive"),
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
    "FineTuningService/WatchEventPages": ("GET", f"{J}/{{job_id}}/events"),
    "FineTuningService/ListCheckpoints": ("GET", f"{J}/{{job_id}}/checkpoints"),
    "AliasService/CreateAlias": ("POST", AL),
    "AliasService/ListAliases": ("GET", AL),
    "AliasService/GetAlias": ("GET", f"{AL}/{{name}}"),
    "AliasService/UpdateAlias": ("POST", f"{AL}/{{name}}"),
    "AliasService/RollbackAlias": ("POST", f"{AL}/{{name}}/rollback"),
    "AliasService/ListAliasVersions": ("GET", f"{AL}/{{name}}/history"),
    "AliasService/DeleteAlias": ("DELETE", f"{AL}/{{name}}"),
    "GraderService/RunGrader": ("POST", f"{GR}/run"),
    "GraderService/ValidateGrader": ("POST", f"{GR}/validate"),
    "EvaluationService/CreateEvaluation": ("POST", EV),
    "EvaluationService/GetEvaluation": ("GET", f"{EV}/{{evaluation_id}}"),
    "EvaluationService/ListEvaluations": ("GET", EV),
    "EvaluationService/CancelEvaluation": ("POST", f"{EV}/{{evaluation_id}}/cancel"),
    "EvaluationService/GetEvaluationReport": ("GET", f"{EV}/{{evaluation_id}}/report"),
    "ExportService/CreateExport": ("POST", EX),
    "ExportService/GetExport": ("GET", f"{EX}/{{export_id}}"),
    "ExportService/ListExports": ("GET", EX),
    "ExportService/CancelExport": ("POST", f"{EX}/{{export_id}}/cancel"),
    "FineTuningService/GetJobEvalReport": ("GET", f"{J}/{{job_id}}/eval_report"),
    "FineTuningService/GetCheckpointEvalReport": ("GET", f"{J}/{{job_id}}/checkpoints/{{checkpoint_id}}/eval_report"),
    "EmbeddingService/CreateEmbedding": ("POST", "/v1/embeddings"),
    "CallerService/GetCaller": ("GET", "/v1/tunery/me"),
    "SecretService/ListSecrets": ("GET", SE),
    "SecretService/SetSecret": ("POST", f"{SE}/{{name}}"),
    "SecretService/DeleteSecret": ("DELETE", f"{SE}/{{name}}"),
    "WebhookService/CreateWebhookEndpoint": ("POST", WH),
    "WebhookService/ListWebhookEndpoints": ("GET", WH),
    "WebhookService/GetWebhookEndpoint": ("GET", f"{WH}/{{webhook_endpoint_id}}"),
    "WebhookService/UpdateWebhookEndpoint": ("POST", f"{WH}/{{webhook_endpoint_id}}"),
    "WebhookService/DeleteWebhookEndpoint": ("DELETE", f"{WH}/{{webhook_endpoint_id}}"),
    "WebhookService/ListWebhookDeliveries": ("GET", f"{WH}/{{webhook_endpoint_id}}/deliveries"),
    "WebhookService/RedeliverWebhookDelivery": (
        "POST",
        f"{WH}/{{webhook_endpoint_id}}/deliveries/{{delivery_id}}/redeliver",
    ),
}


class Calls:
    """Runs the RPCs of one server on the API's event loop (``ctx``'s services; their blocking work in threads)."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def _principal(self, rpc: str, authorization: str | None) -> Principal:
        """Who the caller is, once its key and role are admitted for ``rpc`` and its project's rate limit has a turn
        for it (REST's door, api/limits.py; blocking: a stored key and a limit are read from the store)."""
        method, template = REST_TWIN[rpc]
        ctx = self.ctx
        principal, _ = admission(ctx.settings, ctx.keys, ctx.rate_limiter, authorization, method, template, {})
        return principal

    @staticmethod
    def _start(context: grpc.aio.ServicerContext) -> tuple[str, str | None]:
        """The call's request id (sent in its trailing metadata) and its ``authorization`` metadata."""
        rid = ids.request_id()
        context.set_trailing_metadata((("x-request-id", rid),))
        value = dict(context.invocation_metadata() or ()).get("authorization")
        return rid, value if isinstance(value, str) else None

    def _done(self, rpc: str, code: grpc.StatusCode, started: float) -> None:
        name = rpc.rpartition("/")[2]
        self.ctx.metrics.grpc_requests.labels(name, code.name).inc()
        self.ctx.metrics.grpc_seconds.labels(name).observe(time.perf_counter() - started)

    async def _answer(self, rpc: str, context: grpc.aio.ServicerContext, rid: str, work: Awaitable[T]) -> T:
        """``work``'s result, or its error as the call's status (OpenAI's error in an ErrorInfo), counted."""
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await work
        except asyncio.CancelledError:  # the client left or its deadline passed: nothing is answered
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            err = as_api_error(e)
            code = grpc_code(err.status)
            await context.abort_with_status(status_of(err, rid))
            raise  # not reached: abort_with_status raises
        finally:
            self._done(rpc, code, started)

    async def blocking(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        fn: Callable[[Principal], T],
        *,
        read: bool = True,
        objects: bool = False,
    ) -> T:
        """A call whose work blocks (the metadata store; ``objects``: the object store too): the key's admission and
        ``fn`` with the caller's project in one call, where REST's reads run for a read (api/context.py's
        ``run_read``), else in a thread."""
        rid, authorization = self._start(context)

        def work() -> T:
            return fn(self._principal(rpc, authorization))

        run = run_read(self.ctx, work, objects=objects) if read else asyncio.to_thread(work)
        return await self._answer(rpc, context, rid, run)

    async def unary(self, rpc: str, context: grpc.aio.ServicerContext, fn: Callable[[Principal], Awaitable[T]]) -> T:
        """A call whose work is a coroutine (generation, a stream read from the client)."""
        rid, authorization = self._start(context)

        async def work() -> T:
            return await fn(await run_read(self.ctx, self._principal, rpc, authorization))

        return await self._answer(rpc, context, rid, work())

    async def stream(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        first: Callable[[Principal], F],
        rest: Callable[[Principal, F], AsyncIterator[T]],
        *,
        objects: bool = False,
    ) -> AsyncIterator[T]:
        """A server stream: ``first`` (blocking: what the stream starts from; ``objects``: it reads the object store)
        in the same call as the key's admission, where REST's reads run, then the messages of ``rest``, then the
        stream's end or its error."""
        rid, authorization = self._start(context)
        started, code = time.perf_counter(), grpc.StatusCode.OK

        def begin() -> tuple[Principal, F]:
            principal = self._principal(rpc, authorization)
            return principal, first(principal)

        try:
            principal, start = await run_read(self.ctx, begin, objects=objects)
            async for message in rest(principal, start):
                yield message
        except (asyncio.CancelledError, GeneratorExit):  # the client left or its deadline passed: resources freed
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
