"""The contract Tunery publishes (its own ``/openapi.json``) against OpenAI's published schema, for the typed
families (files, uploads, models, chat and legacy completions, fine-tuning jobs, checkpoint permissions): every route
declares what it answers, and every property OpenAI requires of an answer is required there too, with a compatible
type. Plus the typed layer's rules: unknown OpenAI fields are accepted and logged, unknown ``tunery.*`` fields are a
400, services raise typed errors and run without HTTP (the jobs family's own cases: tests/api/test_openapi_jobs.py)."""

from __future__ import annotations

import ast
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api import errors
from api.context import AppContext, Tenant
from api.protocol import OpenAIObject, OpenAIRequest, TuneryExtension
from api.protocol.files import CreateFileRequest, FileValidationReport, ListFilesRequest
from api.services.files import FileService
from scheduler.validation import REPORT_OBJECT
from tests.conftest import TINY
from tests.schema import SPEC
from tunery.audit import BOOTSTRAP

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = (
    "/v1/files",
    "/v1/uploads",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/fine_tuning/jobs",
    "/v1/fine_tuning/checkpoints",
    "/v1/fine_tuning/alpha/graders",
)
# OpenAI operations of these families Tunery does not serve: stored chat completions.
NOT_SERVED = {("get", "/chat/completions")}
# Where Tunery's answer knowingly goes beyond OpenAI's schema, and why.
KNOWN = {
    "FileObject.purpose": "'evals': OpenAI takes it on upload (CreateFileRequest); its file object's enum omits it",
    "Upload.file.purpose": "the same file object",
    "FileList.data[].purpose": "the same file object",
    "FineTuningJob.status": "'paused': OpenAI's pause example answers it; its status enum omits it (API-NOTES (c))",
    "ListPaginatedFineTuningJobsResponse.data[].status": "the same job object",
    "ValidateGraderResponse.grader.graders": "a map of names to sub-graders, as OpenAI's graders guide and its "
    "formulas use them; its schema has one grader there (also accepted, named by its `name`)",
    "FineTuningJob.method.reinforcement.grader.graders": "the same grader object, in a reinforcement job",
    "ListPaginatedFineTuningJobsResponse.data[].method.reinforcement.grader.graders": "the same job object",
    "FineTuningJob.integrations[].type": "'mlflow': Tunery's MLflow integration (docs/integrations.md), an object "
    "of its own kind beside OpenAI's W&B one (its section is `mlflow`, not `wandb`); a job without one has OpenAI's",
    "ListPaginatedFineTuningJobsResponse.data[].integrations[].type": "the same job object",
}
KNOWN_SEEN: set[str] = set()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from api.server import build
    from tunery.settings import Settings

    data = tmp_path_factory.mktemp("contract")
    app, shutdown = build(Settings(data_dir=data, demo_model=False, base_models={"m": "/nonexistent"}))
    yield app
    shutdown()


@pytest.fixture(scope="module")
def ours(app: Any) -> dict[str, Any]:
    spec: dict[str, Any] = TestClient(app).get("/openapi.json").json()
    return spec


@pytest.fixture(scope="module")
def openai() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return spec


def _operations(spec: dict[str, Any], prefixes: tuple[str, ...]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        if path.startswith(prefixes):
            for method, op in item.items():
                if method in ("get", "post", "delete"):
                    yield method, path, op


def _template(path: str) -> str:
    """A path with its parameters unnamed: Tunery's ``{job_id}`` is OpenAI's ``{fine_tuning_job_id}``."""
    return re.sub(r"\{[^}]*\}", "{}", path.removeprefix("/v1"))


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].split("/")[-1]]
    return schema


def _branches(schema: dict[str, Any], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives a schema allows (refs resolved, OpenAPI 3.0's ``nullable`` as a null branch)."""
    schema = _resolve(schema, doc)
    out: list[dict[str, Any]] = []
    if schema.get("nullable") or any(b.get("nullable") for b in schema.get("allOf", [])):
        out.append({"type": "null"})  # also OpenAPI 3.0's nullable $ref: allOf: [$ref, {nullable: true}]
    alternatives = schema.get("anyOf", schema.get("oneOf"))
    if alternatives is not None:
        return out + [b for alt in alternatives for b in _branches(alt, doc)]
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}, "required": []}
        for part in schema["allOf"]:
            for b in _branches(part, doc):
                if b.get("type") != "null":
                    merged["properties"].update(b.get("properties", {}))
                    merged["required"] += b.get("required", [])
                    merged.update({k: v for k, v in b.items() if k not in ("properties", "required")})
        return [*out, merged]
    if isinstance(schema.get("type"), list):
        return out + [{**schema, "type": t} for t in schema["type"]]
    return [*out, schema]


def _type(schema: dict[str, Any]) -> str | None:
    """A branch's JSON type; None when it allows anything."""
    if "type" in schema:
        return str(schema["type"])
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if values:
        return {str: "string", bool: "boolean", int: "integer", float: "number"}[type(values[0])]
    return "object" if "properties" in schema or "required" in schema else None


def _values(schema: dict[str, Any]) -> set[Any] | None:
    return {schema["const"]} if "const" in schema else set(schema["enum"]) if "enum" in schema else None


def _same_kind(ours: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Among OpenAI's alternatives of one JSON type, the one to compare with: for objects of a union told apart by
    their ``type`` (graders), the one with the same ``type``; else the first."""
    kind = _values(ours.get("properties", {}).get("type", {}))
    for x in candidates:
        theirs = _values(x.get("properties", {}).get("type", {}))
        if kind and theirs and kind <= theirs:
            return x
    return candidates[0]


def compare(ours: dict[str, Any], theirs: dict[str, Any], docs: tuple[Any, Any], where: str) -> list[str]:
    """Where an answer Tunery's schema allows is not one OpenAI's allows: a type outside OpenAI's, a value outside
    its enum, a property OpenAI requires that Tunery's may leave out (recursively)."""
    mine, spec = docs
    their = _branches(theirs, spec)
    if any(_type(b) is None for b in their):
        return []
    problems = []
    for b in _branches(ours, mine):
        t = _type(b)
        match = [x for x in their if _type(x) == t or (t == "integer" and _type(x) == "number")]
        if not match:
            problems.append(f"{where}: Tunery's {t} is not among OpenAI's {sorted(str(_type(x)) for x in their)}")
            continue
        x = _same_kind(b, match)
        kind, their_kind = (_values(o.get("properties", {}).get("type", {})) for o in (b, x))
        if t == "object" and f"{where}.type" in KNOWN and kind and their_kind and not kind <= their_kind:
            KNOWN_SEEN.add(f"{where}.type")  # a kind of object of Tunery's own, in a list OpenAI has one kind in
            continue
        mv, tv = _values(b), _values(x)
        if mv and tv and not mv <= tv:
            if where in KNOWN:
                KNOWN_SEEN.add(where)
            else:
                problems.append(f"{where}: Tunery's values {sorted(mv - tv)} are not OpenAI's")
        if t == "array":
            problems += compare(b.get("items", {}), x.get("items", {}), docs, f"{where}[]")
        if t == "object" and where in KNOWN and not b.get("properties") and b.get("additionalProperties"):
            KNOWN_SEEN.add(where)  # a map where OpenAI has one object: its values are compared with that object
            problems += compare(b["additionalProperties"], theirs, docs, f"{where}{{}}")
            continue
        if t == "object":
            props, required = b.get("properties", {}), set(b.get("required", []))
            for name in x.get("required", []):
                if name not in props:
                    problems.append(f"{where}.{name}: required by OpenAI, missing")
                elif name not in required:
                    problems.append(f"{where}.{name}: required by OpenAI, may be left out")
            for name, prop in props.items():
                if name in x.get("properties", {}):
                    problems += compare(prop, x["properties"][name], docs, f"{where}.{name}")
    return problems


def _ok_schema(op: dict[str, Any]) -> dict[str, Any] | None:
    return op["responses"]["200"].get("content", {}).get("application/json", {}).get("schema")


def test_every_route_of_the_typed_families_declares_its_answer(ours: dict[str, Any]) -> None:
    ops = list(_operations(ours, FAMILIES))
    assert len(ops) >= 25
    for method, path, op in ops:
        content = op["responses"]["200"].get("content", {})
        schema = _ok_schema(op)
        if path.endswith("/content"):  # a download: bytes, documented by media type
            assert schema is None and content["application/octet-stream"]["schema"]["format"] == "binary"
            continue
        assert schema is not None and "$ref" in schema, f"{method.upper()} {path} declares no response model"
        if path.endswith("/completions"):
            assert "text/event-stream" in content, f"{method.upper()} {path} does not document its stream"
        # Failures are OpenAI's error object, not FastAPI's 422.
        assert "422" not in op["responses"]
        assert op["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_tunery_serves_openais_operations_of_these_families(ours: dict[str, Any], openai: dict[str, Any]) -> None:
    served = {(m, _template(p)) for m, p, _ in _operations(ours, FAMILIES)}
    wanted = {(m, _template(p)) for m, p, _ in _operations(openai, tuple(f.removeprefix("/v1") for f in FAMILIES))}
    assert wanted - served == NOT_SERVED


def test_answers_are_openais_schema(ours: dict[str, Any], openai: dict[str, Any]) -> None:
    problems, compared = [], 0
    openai_paths = {_template(path): item for path, item in openai["paths"].items()}
    for method, path, op in _operations(ours, FAMILIES):
        theirs_op = openai_paths.get(_template(path), {}).get(method)
        schema = _ok_schema(op)
        if theirs_op is None or schema is None:
            continue  # Tunery's extensions (validation report, URL, dry run) and the download
        theirs = theirs_op["responses"]["200"]["content"]["application/json"]["schema"]
        name = schema["$ref"].split("/")[-1]
        problems += [f"{method.upper()} {path}: {p}" for p in compare(schema, theirs, (ours, openai), name)]
        compared += 1
    assert compared == 26
    assert problems == [], "\n".join(problems)
    assert set(KNOWN) == KNOWN_SEEN  # each listed deviation still exists (the list does not rot)
    # The error body too.
    error = ours["components"]["schemas"]["ErrorResponse"]
    assert compare(error, {"$ref": "#/components/schemas/ErrorResponse"}, (ours, openai), "ErrorResponse") == []


def test_the_comparison_finds_what_it_should(ours: dict[str, Any], openai: dict[str, Any]) -> None:
    file = {"$ref": "#/components/schemas/OpenAIFile"}
    loose = {"type": "object", "properties": {"id": {"type": "integer"}, "object": {"const": "upload"}}}
    found = compare(loose, file, (ours, openai), "X")
    assert "X.id: Tunery's integer is not among OpenAI's ['string']" in found
    assert "X.object: Tunery's values ['upload'] are not OpenAI's" in found
    assert "X.bytes: required by OpenAI, missing" in found
    optional = {"type": "object", "properties": {"id": {"type": "string"}}}
    assert "X.id: required by OpenAI, may be left out" in compare(optional, file, (ours, openai), "X")
    # A union of objects told apart by `type` is compared branch by branch (OpenAI's graders).
    fields = ("type", "name", "input", "reference", "operation")
    check = {"type": "object", "properties": {f: {"type": "string"} for f in fields}, "required": list(fields)}
    check["properties"]["type"] = {"const": "string_check"}
    multi = {"type": "object", "properties": {"type": {"const": "multi"}, "name": {"type": "string"}}}
    multi["required"] = ["type", "name"]
    union = {"type": "object", "properties": {"grader": {"oneOf": [check, multi]}}}
    assert compare(union, {"$ref": "#/components/schemas/ValidateGraderResponse"}, (ours, openai), "X") == [
        "X.grader.graders: required by OpenAI, missing",
        "X.grader.calculate_output: required by OpenAI, missing",
    ]
    nullable = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert compare(nullable, {"type": "string"}, (ours, openai), "X") == [
        "X: Tunery's null is not among OpenAI's ['string']"
    ]


def test_the_validation_report_object_is_the_validators() -> None:
    assert FileValidationReport(file_id="file-x", status="pending").object == REPORT_OBJECT


# ---- requests: unknown OpenAI fields are accepted and logged, unknown tunery.* fields are a 400 ----------------
class _Part(OpenAIObject):
    text: str


class _Options(TuneryExtension):
    steps: int = 1


class _Request(OpenAIRequest):
    parts: list[_Part] = []
    tunery: _Options | None = None


def test_unknown_openai_fields_are_kept_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tunery.api"):
        req = _Request.model_validate({"parts": [{"text": "a", "tone": "dry"}], "future": 1, "tunery": {"steps": 2}})
    assert req.unknown_fields() == ["future", "parts[0].tone"]
    assert req.model_dump(exclude_unset=True)["future"] == 1  # passed on as sent
    warnings = [r.getMessage() for r in caplog.records if r.name == "tunery.api"]
    assert warnings == ["_Request: accepted field(s) Tunery does not know: future, parts[0].tone"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tunery.api"):
        _Request.model_validate({"parts": [{"text": "a"}]})
    assert caplog.records == []


def test_unknown_tunery_fields_are_a_400() -> None:
    with pytest.raises(ValidationError) as e:
        _Request.model_validate({"tunery": {"steps": 2, "stpes": 3}})
    err = errors.api_error(errors.invalid_request(e.value.errors()))
    assert (err.status, err.param, err.type) == (400, "tunery.stpes", "invalid_request_error")


def test_chat_accepts_an_unknown_field_and_logs_it(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": "hi", "future_note": "x"}],
        "max_tokens": 2,
        "temperature": 0,
        "future_option": {"level": 3},
    }
    with caplog.at_level(logging.WARNING, logger="tunery.api"):
        r = server.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion" and r.json()["choices"][0]["message"]["refusal"] is None
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "tunery.api"]
    assert warnings == [
        "ChatCompletionRequest: accepted field(s) Tunery does not know: future_option, messages[0].future_note"
    ]
    # Fields OpenAI defines are known, even where Tunery does nothing with them.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tunery.api"):
        known = {**body, "messages": [{"role": "user", "content": "hi"}], "user": "u-1", "store": False}
        del known["future_option"]
        assert server.http.post("/v1/chat/completions", json=known).status_code == 200
    assert [rec for rec in caplog.records if rec.name == "tunery.api"] == []


# ---- typed errors and services without HTTP --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (errors.InvalidRequest("x", param="p", code="c"), 400, {}),
        (errors.NotFound("x", param="id"), 404, {}),
        (errors.TooLarge("x"), 413, {}),
        (errors.Conflict("x", code="upload_busy"), 409, {"x-should-retry": "true"}),
        (errors.Unavailable("x"), 503, {"x-should-retry": "false"}),
        (errors.Unavailable("x", retry_after=5), 503, {"retry-after": "5"}),
        (errors.RateLimited("x", retry_after=2), 429, {"retry-after": "2"}),
    ],
)
def test_typed_errors_become_openais_error_with_their_status(
    error: errors.ServiceError, status: int, headers: dict[str, str]
) -> None:
    err = errors.api_error(error)
    assert (err.status, err.headers) == (status, headers)
    assert err.body() == {"error": {"message": "x", "type": error.type, "param": error.param, "code": error.code}}
    response = errors.error_response(err)
    assert response.status_code == status
    assert all(response.headers[k] == v for k, v in headers.items())


def test_the_files_service_runs_without_http(app: Any) -> None:
    ctx: AppContext = app.state.ctx
    svc = FileService(ctx, Tenant(ctx.settings.organization_id, ctx.settings.project_id), BOOTSTRAP)
    f = svc.create(CreateFileRequest(purpose="assistants", filename="dir/notes.txt"), io.BytesIO(b"notes"))
    assert (f.filename, f.bytes, f.status, f.expires_at) == ("notes.txt", 5, "processed", None)
    assert "expires_at" not in f.model_dump()  # OpenAI's optional, non-nullable fields are left out
    assert svc.retrieve(f.id) == f
    assert [x.id for x in svc.list(ListFilesRequest(purpose="assistants")).data] == [f.id]
    assert b"".join(svc.content(f.id).chunks) == b"notes"
    with pytest.raises(errors.InvalidRequest) as bad:
        svc.create(CreateFileRequest(purpose="fine-tune", filename="a.csv"), io.BytesIO(b"a,b"))
    assert bad.value.param == "file"
    assert svc.delete(f.id).deleted
    with pytest.raises(errors.NotFound):
        svc.retrieve(f.id)


def test_protocol_and_services_never_touch_http() -> None:
    """The gRPC API (a later issue) calls the services: they and the protocol import no web framework."""
    for folder in ("api/protocol", "api/services"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                assert not {n.split(".")[0] for n in names} & {"fastapi", "starlette"}, f"{path} imports {names}"
