"""The short jobs' gRPC services (evaluations, exports): REST's services (api/services/short_jobs.py and its kinds),
each RPC the twin of its ``/v1/tunery/...`` route. :class:`_ShortJobServicer` holds what they share: create, get,
list and cancel, converted alike; a kind names its messages and adds its own RPCs."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Generic, TypeVar

from google.protobuf.message import Message
from pydantic import BaseModel

from api.auth import Principal
from api.grpc.convert import message_dict, to_message
from api.grpc.services import Context, Servicer, query_of
from api.protocol.base import PageRequest
from api.protocol.evaluations import CreateEvaluationRequest, ListEvaluationsRequest
from api.protocol.exports import CreateExportRequest, ListExportsRequest
from api.services.evaluations import EvaluationService
from api.services.exports import ExportService
from api.services.short_jobs import ShortJobService
from tunery.v1 import evaluations_pb2 as evals_pb
from tunery.v1 import evaluations_pb2_grpc as evals_grpc
from tunery.v1 import exports_pb2 as exports_pb
from tunery.v1 import exports_pb2_grpc as exports_grpc

S = TypeVar("S", bound=ShortJobService[Any, Any])


class _ShortJobServicer(Servicer, Generic[S]):
    service_type: ClassVar[type[ShortJobService[Any, Any]]]
    service_name: ClassVar[str]  # "EvaluationService": the RPCs' full names in metrics and logs
    message: ClassVar[type[Message]]  # the resource
    list_message: ClassVar[type[Message]]
    create_request: ClassVar[type[BaseModel]]
    list_request: ClassVar[type[PageRequest]]

    def _svc(self, p: Principal) -> S:
        return self.service_type(self.ctx, *self._who(p))  # type: ignore[return-value]

    def _id(self, request: Any) -> str:
        return str(getattr(request, self.service_type.noun + "_id"))

    async def _create(self, rpc: str, request: Any, context: Context) -> Any:
        def run(p: Principal) -> Message:
            req = self.create_request.model_validate(message_dict(request))
            return to_message(self._svc(p).create(req), self.message)  # type: ignore[attr-defined]

        return await self.calls.blocking(f"{self.service_name}/{rpc}", context, run, read=False)

    async def _get(self, rpc: str, request: Any, context: Context) -> Any:
        def run(p: Principal) -> Message:
            return to_message(self._svc(p).retrieve(self._id(request)), self.message)

        return await self.calls.blocking(f"{self.service_name}/{rpc}", context, run)

    async def _list(self, rpc: str, request: Any, context: Context) -> Any:
        def run(p: Principal) -> Message:
            req = self.list_request.model_validate(query_of(request))
            return to_message(self._svc(p).list(req), self.list_message)

        return await self.calls.blocking(f"{self.service_name}/{rpc}", context, run)

    async def _cancel(self, rpc: str, request: Any, context: Context) -> Any:
        def run(p: Principal) -> Message:
            return to_message(self._svc(p).cancel(self._id(request)), self.message)

        return await self.calls.blocking(f"{self.service_name}/{rpc}", context, run, read=False)


class EvaluationServicer(_ShortJobServicer[EvaluationService], evals_grpc.EvaluationServiceServicer):
    """On-demand evaluations: REST's service (api/services/evaluations.py)."""

    service_type = EvaluationService
    service_name = "EvaluationService"
    message = evals_pb.Evaluation
    list_message = evals_pb.ListEvaluationsResponse
    create_request = CreateEvaluationRequest
    list_request = ListEvaluationsRequest

    async def CreateEvaluation(self, request: evals_pb.CreateEvaluationRequest, context: Context) -> Any:
        return await self._create("CreateEvaluation", request, context)

    async def GetEvaluation(self, request: evals_pb.GetEvaluationRequest, context: Context) -> Any:
        return await self._get("GetEvaluation", request, context)

    async def ListEvaluations(self, request: evals_pb.ListEvaluationsRequest, context: Context) -> Any:
        return await self._list("ListEvaluations", request, context)

    async def CancelEvaluation(self, request: evals_pb.CancelEvaluationRequest, context: Context) -> Any:
        return await self._cancel("CancelEvaluation", request, context)

    async def GetEvaluationReport(self, request: evals_pb.GetEvaluationReportRequest, context: Context) -> Any:
        def run(p: Principal) -> evals_pb.EvaluationReport:
            report = self._svc(p).report(request.evaluation_id)
            # REST's JSON of the report (a NaN figure is null there, as in the Struct), whole, as a Struct.
            return to_message({"report": json.loads(report.model_dump_json())}, evals_pb.EvaluationReport)

        return await self.calls.blocking("EvaluationService/GetEvaluationReport", context, run)


class ExportServicer(_ShortJobServicer[ExportService], exports_grpc.ExportServiceServicer):
    """Merged-model exports: REST's service (api/services/exports.py)."""

    service_type = ExportService
    service_name = "ExportService"
    message = exports_pb.Export
    list_message = exports_pb.ListExportsResponse
    create_request = CreateExportRequest
    list_request = ListExportsRequest

    async def CreateExport(self, request: exports_pb.CreateExportRequest, context: Context) -> Any:
        return await self._create("CreateExport", request, context)

    async def GetExport(self, request: exports_pb.GetExportRequest, context: Context) -> Any:
        return await self._get("GetExport", request, context)

    async def ListExports(self, request: exports_pb.ListExportsRequest, context: Context) -> Any:
        return await self._list("ListExports", request, context)

    async def CancelExport(self, request: exports_pb.CancelExportRequest, context: Context) -> Any:
        return await self._cancel("CancelExport", request, context)
