"""The public gRPC services: each RPC converts its request, calls the REST API's service (api/services/) and
converts its answer; no business rule lives here. Blocking service calls run where REST's do (api/context.py's
``run_read``)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message
from pydantic import BaseModel

from api.auth import Principal
from api.context import AppContext, Tenant, run_read
from api.encoded import EncodedPage
from api.errors import APIError, InvalidRequest
from api.grpc.calls import Calls
from api.grpc.convert import encoding, list_message, message_dict, page_message, to_message
from api.protocol.aliases import (
    CreateAliasRequest,
    ListAliasesRequest,
    ListAliasVersionsRequest,
    RollbackAliasRequest,
    UpdateAliasRequest,
)
from api.protocol.chat import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, SamplingRequest
from api.protocol.files import CreateFileRequest, ListFilesRequest
from api.protocol.graders import RunGraderRequest, ValidateGraderRequest
from api.protocol.jobs import CreateJob, ListJobCheckpointsRequest, ListJobEventsRequest, ListJobsRequest
from api.services import graders
from api.services.aliases import AliasService
from api.services.chat import ChatService
from api.services.files import FileContent, FileService, file_too_large
from api.services.jobs import JobService
from api.services.models import ModelArchive, ModelService
from tunery.audit import Actor
from tunery.v1 import aliases_pb2 as aliases_pb
from tunery.v1 import aliases_pb2_grpc as aliases_grpc
from tunery.v1 import chat_pb2 as chat_pb
from tunery.v1 import chat_pb2_grpc as chat_grpc
from tunery.v1 import files_pb2 as files_pb
from tunery.v1 import files_pb2_grpc as files_grpc
from tunery.v1 import fine_tuning_pb2 as ft_pb
from tunery.v1 import fine_tuning_pb2_grpc as ft_grpc
from tunery.v1 import graders_pb2 as graders_pb
from tunery.v1 import graders_pb2_grpc as graders_grpc
from tunery.v1 import models_pb2 as models_pb
from tunery.v1 import models_pb2_grpc as models_grpc

T = TypeVar("T")
M = TypeVar("M", bound=Message)
Context: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]
SPOOL_MEMORY_BYTES = 1 << 20  # an upload past this is spooled to disk
DOWNLOAD_CHUNK = 1 << 20  # a DownloadFile message's most bytes: well under the message size limit


def query_of(request: Any, *path_fields: str) -> dict[str, Any]:
    """A request's fields other than those REST takes from the path: its query, as REST reads it."""
    return {k: v for k, v in message_dict(request).items() if k not in path_fields}


async def _pieces(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """A download's chunks, each read in a thread (the object store blocks), cut to at most DOWNLOAD_CHUNK bytes."""
    it = iter(chunks)
    while (chunk := await asyncio.to_thread(next, it, None)) is not None:
        for i in range(0, len(chunk), DOWNLOAD_CHUNK):
            yield chunk[i : i + DOWNLOAD_CHUNK]


class Servicer:
    def __init__(self, ctx: AppContext, calls: Calls):
        self.ctx, self.calls = ctx, calls

    def _who(self, p: Principal) -> tuple[Tenant, Actor]:
        """The services' view of the caller: its project, and who the audit log says acted."""
        return p.tenant(self.ctx.settings), p.actor


class ModelServicer(Servicer, models_grpc.ModelServiceServicer):
    async def ListModels(self, request: models_pb.ListModelsRequest, context: Context) -> Any:
        def run(p: Principal) -> bytes:
            models = ModelService(self.ctx, *self._who(p)).list_encoded(encoding(models_pb.Model))
            return list_message(models_pb.ListModelsResponse, models)

        return await self.calls.blocking("ModelService/ListModels", context, run)

    async def GetModel(self, request: models_pb.GetModelRequest, context: Context) -> Any:
        def run(p: Principal) -> models_pb.Model:
            return to_message(ModelService(self.ctx, *self._who(p)).retrieve(request.model), models_pb.Model)

        return await self.calls.blocking("ModelService/GetModel", context, run)

    async def DeleteModel(self, request: models_pb.DeleteModelRequest, context: Context) -> Any:
        async def run(p: Principal) -> models_pb.DeleteModelResponse:
            return to_message(
                await ModelService(self.ctx, *self._who(p)).delete(request.model), models_pb.DeleteModelResponse
            )

        return await self.calls.unary("ModelService/DeleteModel", context, run)

    async def DownloadArchive(self, request: models_pb.DownloadArchiveRequest, context: Context) -> Any:
        def first(p: Principal) -> ModelArchive:
            return ModelService(self.ctx, *self._who(p)).archive(request.model)

        async def rest(p: Principal, archive: ModelArchive) -> AsyncIterator[models_pb.ArchiveChunk]:
            async for chunk in _pieces(archive.chunks):
                yield models_pb.ArchiveChunk(data=chunk)

        async for chunk in self.calls.stream("ModelService/DownloadArchive", context, first, rest, objects=True):
            yield chunk


class AliasServicer(Servicer, aliases_grpc.AliasServiceServicer):
    def _svc(self, p: Principal) -> AliasService:
        return AliasService(self.ctx, *self._who(p))

    async def CreateAlias(self, request: aliases_pb.CreateAliasRequest, context: Context) -> Any:
        def run(p: Principal) -> aliases_pb.Alias:
            req = CreateAliasRequest.model_validate(message_dict(request))
            return to_message(self._svc(p).create(req), aliases_pb.Alias)

        return await self.calls.blocking("AliasService/CreateAlias", context, run, read=False)

    async def ListAliases(self, request: aliases_pb.ListAliasesRequest, context: Context) -> Any:
        def run(p: Principal) -> aliases_pb.ListAliasesResponse:
            req = ListAliasesRequest.model_validate(query_of(request))
            return to_message(self._svc(p).list(req), aliases_pb.ListAliasesResponse)

        return await self.calls.blocking("AliasService/ListAliases", context, run)

    async def GetAlias(self, request: aliases_pb.GetAliasRequest, context: Context) -> Any:
        def run(p: Principal) -> aliases_pb.Alias:
            return to_message(self._svc(p).retrieve(request.name), aliases_pb.Alias)

        return await self.calls.blocking("AliasService/GetAlias", context, run)

    async def UpdateAlias(self, request: aliases_pb.UpdateAliasRequest, context: Context) -> Any:
        def run(p: Principal) -> aliases_pb.Alias:
            req = UpdateAliasRequest.model_validate(query_of(request, "name"))
            return to_message(self._svc(p).update(request.name, req), aliases_pb.Alias)

        return await self.calls.blocking("AliasService/UpdateAlias", context, run, read=False)

    async def RollbackAlias(self, request: aliases_pb.RollbackAliasRequest, context: Context) -> Any:
        def run(p: Principal) -> aliases_pb.Alias:
            req = RollbackAliasRequest.model_validate(query_of(request, "name"))
            return to_message(self._svc(p).rollback(request.name, req), aliases_pb.Alias)

        return await self.calls.blocking("AliasService/RollbackAlias", context, run, read=False)

    async def ListAliasVersions(self, request: aliases_pb.ListAliasVersionsRequest, context: Context) -> Any:
        def run(p: Principal) -> aliases_pb.ListAliasVersionsResponse:
            req = ListAliasVersionsRequest.model_validate(query_of(request, "name"))
            return to_message(self._svc(p).history(request.name, req), aliases_pb.ListAliasVersionsResponse)

        return await self.calls.blocking("AliasService/ListAliasVersions", context, run)

    async def DeleteAlias(self, request: aliases_pb.DeleteAliasRequest, context: Context) -> Any:
        def run(p: Principal) -> aliases_pb.DeleteAliasResponse:
            return to_message(self._svc(p).delete(request.name), aliases_pb.DeleteAliasResponse)

        return await self.calls.blocking("AliasService/DeleteAlias", context, run, read=False)


class FileServicer(Servicer, files_grpc.FileServiceServicer):
    async def UploadFile(self, request_iterator: AsyncIterator[files_pb.UploadFileRequest], context: Context) -> Any:
        async def run(p: Principal) -> files_pb.File:
            first = await anext(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidRequest("The first message of an upload must be its header.", param="header")
            req = CreateFileRequest.model_validate(message_dict(first.header))
            limit = self.ctx.settings.max_file_bytes
            # Spooled as REST's multipart parser spools a file (to disk past 1 MiB: memory holds one message),
            # counted as it arrives and refused as soon as it passes the limit.
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
                size = 0
                async for message in request_iterator:
                    if message.WhichOneof("part") != "data":
                        raise InvalidRequest("Only the first message of an upload is a header.", param="header")
                    size += len(message.data)
                    if size > limit:
                        raise file_too_large(limit)
                    await asyncio.to_thread(spool.write, message.data)
                spool.seek(0)
                made = await asyncio.to_thread(FileService(self.ctx, *self._who(p)).create, req, spool)  # type: ignore[arg-type]
            return to_message(made, files_pb.File)

        return await self.calls.unary("FileService/UploadFile", context, run)

    async def GetFile(self, request: files_pb.GetFileRequest, context: Context) -> Any:
        def run(p: Principal) -> bytes:
            return FileService(self.ctx, *self._who(p)).retrieve_encoded(request.file_id, encoding(files_pb.File))

        return await self.calls.blocking("FileService/GetFile", context, run)

    async def ListFiles(self, request: files_pb.ListFilesRequest, context: Context) -> Any:
        def run(p: Principal) -> bytes:
            req = ListFilesRequest.model_validate(query_of(request))
            page = FileService(self.ctx, *self._who(p)).list_encoded(req, encoding(files_pb.File))
            return page_message(files_pb.ListFilesResponse, page)

        return await self.calls.blocking("FileService/ListFiles", context, run)

    async def DeleteFile(self, request: files_pb.DeleteFileRequest, context: Context) -> Any:
        def run(p: Principal) -> files_pb.DeleteFileResponse:
            return to_message(FileService(self.ctx, *self._who(p)).delete(request.file_id), files_pb.DeleteFileResponse)

        return await self.calls.blocking("FileService/DeleteFile", context, run, read=False)

    async def DownloadFile(self, request: files_pb.DownloadFileRequest, context: Context) -> Any:
        def first(p: Principal) -> FileContent:
            return FileService(self.ctx, *self._who(p)).content(request.file_id)

        async def rest(p: Principal, content: FileContent) -> AsyncIterator[files_pb.FileChunk]:
            async for chunk in _pieces(content.chunks):
                yield files_pb.FileChunk(data=chunk)

        async for chunk in self.calls.stream("FileService/DownloadFile", context, first, rest, objects=True):
            yield chunk

    async def GetValidationReport(self, request: files_pb.GetValidationReportRequest, context: Context) -> Any:
        def run(p: Principal) -> files_pb.FileValidationReport:
            model = request.model if request.HasField("model") else None
            report = FileService(self.ctx, *self._who(p)).validation(request.file_id, model).model_dump(mode="json")
            head = {k: report.pop(k) for k in ("object", "file_id", "status")}
            return to_message({**head, "report": report}, files_pb.FileValidationReport)

        return await self.calls.blocking("FileService/GetValidationReport", context, run, objects=True)


class FineTuningServicer(Servicer, ft_grpc.FineTuningServiceServicer):
    def __init__(self, ctx: AppContext, calls: Calls, watch_poll_seconds: float = 0.5):
        super().__init__(ctx, calls)
        self.watch_poll_seconds = watch_poll_seconds

    async def CreateJob(self, request: ft_pb.CreateJobRequest, context: Context) -> Any:
        def run(p: Principal) -> ft_pb.FineTuningJob:
            job = JobService(self.ctx, *self._who(p)).create(CreateJob.model_validate(message_dict(request)))
            return to_message(job, ft_pb.FineTuningJob)

        return await self.calls.blocking("FineTuningService/CreateJob", context, run, read=False)

    async def DryRun(self, request: ft_pb.CreateJobRequest, context: Context) -> Any:
        def run(p: Principal) -> ft_pb.FineTuningJobEstimate:
            req = CreateJob.model_validate(message_dict(request))
            answer = JobService(self.ctx, *self._who(p)).dry_run(req).model_dump(mode="json")
            head = {
                k: answer.pop(k) for k in ("object", "model", "training_file", "hyperparameters", "estimated_finish")
            }
            return to_message({**head, "estimate": answer}, ft_pb.FineTuningJobEstimate)

        return await self.calls.blocking("FineTuningService/DryRun", context, run, read=False)

    async def GetJob(self, request: ft_pb.GetJobRequest, context: Context) -> Any:
        def run(p: Principal) -> bytes:
            return JobService(self.ctx, *self._who(p)).retrieve_encoded(request.job_id, encoding(ft_pb.FineTuningJob))

        return await self.calls.blocking("FineTuningService/GetJob", context, run)

    async def ListJobs(self, request: ft_pb.ListJobsRequest, context: Context) -> Any:
        def run(p: Principal) -> bytes:
            req = ListJobsRequest.model_validate(query_of(request))
            page = JobService(self.ctx, *self._who(p)).list_encoded(req, encoding(ft_pb.FineTuningJob))
            return page_message(ft_pb.ListJobsResponse, page)

        return await self.calls.blocking("FineTuningService/ListJobs", context, run)

    async def _transition(self, rpc: str, request: ft_pb.JobRequest, context: Context) -> Any:
        def run(p: Principal) -> ft_pb.FineTuningJob:
            svc = JobService(self.ctx, *self._who(p))
            change = {"CancelJob": svc.cancel, "PauseJob": svc.pause, "ResumeJob": svc.resume}[rpc]
            return to_message(change(request.job_id), ft_pb.FineTuningJob)

        return await self.calls.blocking(f"FineTuningService/{rpc}", context, run, read=False)

    async def CancelJob(self, request: ft_pb.JobRequest, context: Context) -> Any:
        return await self._transition("CancelJob", request, context)

    async def PauseJob(self, request: ft_pb.JobRequest, context: Context) -> Any:
        return await self._transition("PauseJob", request, context)

    async def ResumeJob(self, request: ft_pb.JobRequest, context: Context) -> Any:
        return await self._transition("ResumeJob", request, context)

    async def ListEvents(self, request: ft_pb.ListEventsRequest, context: Context) -> Any:
        def run(p: Principal) -> bytes:
            req = ListJobEventsRequest.model_validate(query_of(request, "job_id"))
            svc = JobService(self.ctx, *self._who(p))
            return page_message(
                ft_pb.ListEventsResponse, svc.events_encoded(request.job_id, req, encoding(ft_pb.FineTuningJobEvent))
            )

        return await self.calls.blocking("FineTuningService/ListEvents", context, run)

    def _watched(self, rpc: str, request: ft_pb.WatchEventsRequest, context: Context) -> AsyncIterator[EncodedPage]:
        """The pages of events a watch sends (each event encoded once, api/encoded.py): the stored ones after the
        request's cursor, then those read on each poll while the job runs, until it has ended."""
        Page = tuple[EncodedPage, bool]
        event = encoding(ft_pb.FineTuningJobEvent)
        after = request.after if request.HasField("after") else None

        def page(p: Principal, cursor: str | None) -> Page:
            return JobService(self.ctx, *self._who(p)).events_after(request.job_id, cursor, event)

        def first(p: Principal) -> Page:
            return page(p, after)

        async def rest(p: Principal, start: Page) -> AsyncIterator[EncodedPage]:
            (events, ended), cursor = start, after
            while True:
                if events.ids:
                    yield events
                    cursor = events.ids[-1]
                if ended:
                    return
                if not events.ids:  # a client that leaves cancels this wait: nothing is left behind
                    await asyncio.sleep(self.watch_poll_seconds)
                events, ended = await run_read(self.ctx, page, p, cursor)

        return self.calls.stream(f"FineTuningService/{rpc}", context, first, rest)

    async def WatchEvents(self, request: ft_pb.WatchEventsRequest, context: Context) -> Any:
        async for events in self._watched("WatchEvents", request, context):
            for data in events.items:
                yield data  # a FineTuningJobEvent, serialized already

    async def WatchEventPages(self, request: ft_pb.WatchEventsRequest, context: Context) -> Any:
        async for events in self._watched("WatchEventPages", request, context):
            yield page_message(ft_pb.ListEventsResponse, events)

    async def ListCheckpoints(self, request: ft_pb.ListCheckpointsRequest, context: Context) -> Any:
        def run(p: Principal) -> ft_pb.ListCheckpointsResponse:
            req = ListJobCheckpointsRequest.model_validate(query_of(request, "job_id"))
            return to_message(
                JobService(self.ctx, *self._who(p)).checkpoints(request.job_id, req), ft_pb.ListCheckpointsResponse
            )

        return await self.calls.blocking("FineTuningService/ListCheckpoints", context, run)

    async def _eval_report(self, rpc: str, job_id: str, checkpoint_id: str | None, context: Context) -> Any:
        def run(p: Principal) -> ft_pb.JobEvalReport:
            report = JobService(self.ctx, *self._who(p)).eval_report(job_id, checkpoint_id)
            # REST's JSON of the report (a NaN figure is null there, as in the Struct), whole, as a Struct.
            return to_message({"report": json.loads(report.model_dump_json())}, ft_pb.JobEvalReport)

        return await self.calls.blocking(f"FineTuningService/{rpc}", context, run, objects=True)

    async def GetJobEvalReport(self, request: ft_pb.JobRequest, context: Context) -> Any:
        return await self._eval_report("GetJobEvalReport", request.job_id, None, context)

    async def GetCheckpointEvalReport(self, request: ft_pb.GetCheckpointEvalReportRequest, context: Context) -> Any:
        return await self._eval_report("GetCheckpointEvalReport", request.job_id, request.checkpoint_id, context)


def _sse_payloads(events: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a stream of server-sent events (``data: {...}``), up to ``data: [DONE]``; an ``error``
    event (a stream that failed after its first chunk) is raised as the error it carries."""

    async def payloads() -> AsyncIterator[dict[str, Any]]:
        async for event in events:
            for line in event.splitlines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    return
                payload: dict[str, Any] = json.loads(data)
                if "error" in payload:
                    error = payload["error"]
                    raise APIError(
                        500, error.get("message", "The stream failed."), type=error.get("type", "server_error")
                    )
                yield payload

    return payloads()


# How each ChatService RPC reads its request and calls the chat service: (request model, whole answer type, call).
_COMPLETIONS: dict[str, tuple[type[SamplingRequest], type[BaseModel], Callable[..., Awaitable[Any]]]] = {
    "Chat": (ChatCompletionRequest, ChatCompletion, ChatService.chat_completion),
    "": (CompletionRequest, Completion, ChatService.completion),
}


class ChatServicer(Servicer, chat_grpc.ChatServiceServicer):
    """Chat and legacy completions: the request message read as REST's JSON body, the answer (or each streamed
    event) written as its message."""

    async def _whole(self, kind: str, request: Message, message: type[M], context: Context) -> Any:
        model, answer_type, call = _COMPLETIONS[kind]

        async def run(p: Principal) -> M:
            req = model.model_validate({**message_dict(request), "stream": False})
            answer = await call(ChatService(self.ctx, p.tenant(self.ctx.settings)), req)
            assert isinstance(answer, answer_type)
            return to_message(answer, message, engine=True)

        return await self.calls.unary(f"ChatService/Create{kind}Completion", context, run)

    async def _streamed(self, kind: str, request: Message, message: type[M], context: Context) -> AsyncIterator[M]:
        model, answer_type, call = _COMPLETIONS[kind]

        def first(p: Principal) -> SamplingRequest:
            return model.model_validate({**message_dict(request), "stream": True})

        async def rest(p: Principal, req: SamplingRequest) -> AsyncIterator[M]:
            answer = await call(ChatService(self.ctx, p.tenant(self.ctx.settings)), req)
            assert not isinstance(answer, answer_type)
            async for payload in _sse_payloads(answer):
                yield to_message(payload, message, engine=True)

        async for item in self.calls.stream(f"ChatService/Stream{kind}Completion", context, first, rest):
            yield item

    async def CreateChatCompletion(self, request: chat_pb.CreateChatCompletionRequest, context: Context) -> Any:
        return await self._whole("Chat", request, chat_pb.ChatCompletion, context)

    async def StreamChatCompletion(self, request: chat_pb.CreateChatCompletionRequest, context: Context) -> Any:
        async for chunk in self._streamed("Chat", request, chat_pb.ChatCompletionChunk, context):
            yield chunk

    async def CreateCompletion(self, request: chat_pb.CreateCompletionRequest, context: Context) -> Any:
        return await self._whole("", request, chat_pb.Completion, context)

    async def StreamCompletion(self, request: chat_pb.CreateCompletionRequest, context: Context) -> Any:
        async for part in self._streamed("", request, chat_pb.Completion, context):
            yield part


class GraderServicer(Servicer, graders_grpc.GraderServiceServicer):
    """Graders before training: REST's service (api/services/graders.py), for the caller's project (a score_model's
    judge is one of its models). Not in a read thread: a python grader waits up to its time limit on its sandbox."""

    async def RunGrader(self, request: graders_pb.RunGraderRequest, context: Context) -> Any:
        async def run(p: Principal) -> graders_pb.RunGraderResponse:
            req = RunGraderRequest.model_validate(message_dict(request))
            answer = await graders.GraderService(self.ctx, p.tenant(self.ctx.settings)).run(req)
            return to_message(answer, graders_pb.RunGraderResponse)

        return await self.calls.unary("GraderService/RunGrader", context, run)

    async def ValidateGrader(self, request: graders_pb.ValidateGraderRequest, context: Context) -> Any:
        def run(p: Principal) -> graders_pb.ValidateGraderResponse:
            req = ValidateGraderRequest.model_validate(message_dict(request))
            answer = graders.GraderService(self.ctx, p.tenant(self.ctx.settings)).validate(req)
            return to_message(answer, graders_pb.ValidateGraderResponse)

        return await self.calls.blocking("GraderService/ValidateGrader", context, run, read=False)
