"""Merged-model exports over gRPC (``ExportService``, protos/tunery/v1/exports.proto), each RPC the twin of its
``/v1/tunery/exports`` route, through grpc_cases' cases and helpers: the same answers, the same refusals mapped to
status codes with OpenAI's error, the same roles and tenancy. An export run by the real trainer is tested over REST
(tests/api/test_exports.py); what it answers is read here through the same service."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from api.grpc.convert import to_message
from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY
from tests.grpc_cases import (
    Api,
    Case,
    assert_not_found_as_unknown,
    assert_refused_as,
    assert_same_answer,
    assert_same_refusal,
    project_keys,
    rest_status,
)
from tunery.v1 import exports_pb2 as xpb
from tunery.v1 import fine_tuning_pb2 as jpb

EX = "/v1/tunery/exports"


def create(body: dict[str, Any]) -> Case:
    """A CreateExport and its REST twin from one JSON body, its strings filled with the objects (``{model}``): the
    message is built from the body by protobuf's own JSON mapping, not by the server's converter."""

    def filled(o: dict[str, str]) -> dict[str, Any]:
        return {k: v.format(**o) if isinstance(v, str) else v for k, v in body.items()}

    return Case(
        "ExportService/CreateExport",
        lambda o: json_format.ParseDict(filled(o), xpb.CreateExportRequest()),
        EX,
        body=filled,
    )


GET = Case("ExportService/GetExport", lambda o: xpb.GetExportRequest(export_id=o["export_id"]), f"{EX}/{{export_id}}")
CANCEL = Case(
    "ExportService/CancelExport",
    lambda o: xpb.CancelExportRequest(export_id=o["export_id"]),
    f"{EX}/{{export_id}}/cancel",
)


def listing(**query: Any) -> Case:
    return Case("ExportService/ListExports", lambda o: xpb.ListExportsRequest(**query), EX, query)


# Refusals: (case, REST status, code or None when it is not checked, param), the same over both transports.
REFUSALS = [
    pytest.param(create({"model": TINY}), 400, "invalid_model", "model", id="base-model"),
    pytest.param(create({"model": "ft:nope"}), 404, "model_not_found", "model", id="no-model"),
    pytest.param(create({"model": "{model}", "format": "onnx"}), 400, None, "format", id="bad-format"),
    pytest.param(create({"model": "{model}", "dtype": "int3"}), 400, None, "dtype", id="bad-dtype"),
    pytest.param(
        create({"model": "{model}", "format": "gguf", "gguf_type": "q2"}), 400, None, "gguf_type", id="bad-gguf"
    ),
    pytest.param(
        create({"model": "{model}", "gguf_type": "f16"}), 400, "invalid_value", "gguf_type", id="gguf-type-alone"
    ),
    pytest.param(GET, 404, None, "export_id", id="get-unknown"),
    pytest.param(CANCEL, 404, None, "export_id", id="cancel-unknown"),
    pytest.param(listing(limit=0), 400, None, "limit", id="list-limit-0"),
]


@pytest.mark.parametrize(("case", "status", "code", "param"), REFUSALS)
def test_refusals_are_rests(api: Api, case: Case, status: int, code: str | None, param: str) -> None:
    assert_refused_as(api, case, {**api.objects, "export_id": "exportjob-nope"}, status, code, param)


def wait_status(api: Api, export_id: str, statuses: set[str]) -> dict[str, Any]:
    return rest_status(api, f"{EX}/{export_id}", statuses)


def test_an_export_made_read_and_cancelled_over_grpc_is_rests(api: Api) -> None:
    o = api.objects  # nothing launches on this server: an export stays queued
    made = api.call("ExportService/CreateExport", xpb.CreateExportRequest(model=o["model"], dtype="float16"))
    assert made.id.startswith("exportjob-") and made.object == "tunery.export"
    # The values given, REST's defaults for the rest; no GGUF type for a safetensors export, no result yet.
    assert (made.model, made.base_model, made.format, made.dtype) == (o["model"], TINY, "safetensors", "float16")
    assert not made.HasField("gguf_type") and not made.HasField("result_file") and not made.HasField("error")
    first = {**o, "export_id": made.id}
    wait_status(api, made.id, {"queued"})
    assert assert_same_answer(api, GET, first).status == "queued"

    gguf = api.call("ExportService/CreateExport", xpb.CreateExportRequest(model=o["model"], format="gguf"))
    assert (gguf.format, gguf.gguf_type) == ("gguf", "f16")
    wait_status(api, gguf.id, {"queued"})
    page = assert_same_answer(api, listing(limit=1), o)
    assert [e.id for e in page.data] == [gguf.id] and page.has_more
    page = assert_same_answer(api, listing(limit=5, after=gguf.id), o)
    assert [e.id for e in page.data] == [made.id] and not page.has_more

    cancelled = api.call("ExportService/CancelExport", xpb.CancelExportRequest(export_id=made.id))
    assert cancelled.status == "cancelled" and cancelled.HasField("finished_at")
    assert cancelled == to_message(api.server.http.get(f"{EX}/{made.id}").json(), xpb.Export)
    assert assert_same_refusal(api, CANCEL, first)["code"] == "export_not_cancellable"
    # An export is not a fine-tuning job over gRPC either.
    jobs = api.call("FineTuningService/ListJobs", jpb.ListJobsRequest(limit=100))
    assert {made.id, gguf.id}.isdisjoint(j.id for j in jobs.data)
    metrics = api.server.http.get("/metrics").text
    assert 'tunery_grpc_requests_total{code="OK",rpc="CreateExport"} 2.0' in metrics


def test_another_projects_export_is_not_found_and_a_reader_may_not_write(api: Api) -> None:
    o = api.objects
    made = api.call("ExportService/CreateExport", xpb.CreateExportRequest(model=o["model"]))
    _, keys = project_keys(api, "b", "member", "reader")
    theirs, never = {**o, "export_id": made.id}, {**o, "export_id": "exportjob-" + "x" * 24}
    # Another project's export is one that never existed: NOT_FOUND.
    assert_not_found_as_unknown(api, (GET, CANCEL), theirs, never, keys["member"])
    of_theirs = create({"model": "{model}"})
    assert assert_same_refusal(api, of_theirs, o, key=keys["member"])["code"] == "model_not_found"
    for key in keys.values():
        assert list(api.call("ExportService/ListExports", xpb.ListExportsRequest(), key=key).data) == []
    for case, objects in ((CANCEL, theirs), (CANCEL, never), (of_theirs, o)):
        assert assert_same_refusal(api, case, objects, key=keys["reader"])["status"] == 403
    with pytest.raises(grpc.RpcError) as caught:
        api.call("ExportService/GetExport", xpb.GetExportRequest(export_id=made.id), key=keys["reader"])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert api.call("ExportService/GetExport", xpb.GetExportRequest(export_id=made.id)).status != "cancelled"
