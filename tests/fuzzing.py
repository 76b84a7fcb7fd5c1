"""Schemathesis against a running Tunery: the harness of tests/api/test_fuzz.py and bench/fuzz.py.

Two documents describe what the server must answer: OpenAI's published schema, restricted to the operations Tunery
serves (tests/openai/openapi-finetuning.yaml, normalised as tests/schema.py does), and Tunery's own
``/openapi.json``. For each operation of each, Hypothesis (through schemathesis) generates requests that fit the
schema (positive) and requests that do not (negative); every answer is checked: no 5xx, the status, media type and
body its document declares, a stream's events OpenAI's chunks, every error OpenAI's error object (tests/fuzz_checks.py).
A failure is kept with the request that caused it, as a curl command.

The ids in paths are generated (the 404 paths), then, in a second pass, those of real objects made for the round
(:func:`seed_objects`: a validated training file, a pending upload, a queued job with checkpoints and their
models), with the bodies' ``model`` and ``training_file`` real too and a few known-good requests first
(:data:`KNOWN_GOOD`), so the answers that carry real objects are checked as well. Operations that change or delete
what they are given run after those that only read it.

Differences from the documents that are deliberate, and requests bounded for time, are said where they are made:
:data:`KNOWN_VALUES`, :func:`openai_document`, the checks' wrappers (tests/fuzz_checks.py), :data:`MAX_TOKENS`.
"""

from __future__ import annotations

import copy
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from sqlalchemy import select

from scheduler.reporting import servable_model
from tests import schema as openai_schema
from tests.conftest import TINY, RunningServer, chat_lines
from tests.fuzz_checks import CHECKS
from tunery import ids
from tunery.db import Checkpoint, Job

# The served model's answers are bounded: a fuzzed max_tokens runs to the tiny model's context (2,048 tokens) and
# n to 128 choices, which would spend the budget on generation rather than on requests.
MAX_TOKENS = 4
MAX_CHOICES = 2
API_KEY = "sk-fuzz-0123456789abcdef"
# The fuzzing server: a key (every request carries it), no job ever launches (jobs stay queued: no trainer competes
# for the cores), completions bounded.
SERVER_SETTINGS: dict[str, Any] = {
    "api_keys": [API_KEY],
    "max_concurrent_runs": 0,
    "serving_max_new_tokens": MAX_TOKENS,
}
# Run after the operations that only read: each changes or removes the object it names.
CHANGES = ("delete", "/cancel", "/complete", "/pause", "/resume", "/parts")


def template(path: str) -> str:
    """A path with its parameters unnamed: Tunery's ``{job_id}`` is OpenAI's ``{fine_tuning_job_id}``."""
    return re.sub(r"\{[^}]*\}", "{}", path.removeprefix("/v1"))


def tunery_document(base_url: str) -> dict[str, Any]:
    """Tunery's own schema, as the server publishes it."""
    doc: dict[str, Any] = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    return doc


# Where Tunery's answers knowingly go beyond OpenAI's schema (tests/api/test_openapi_contract.py, KNOWN): the value
# is added to OpenAI's enum before fuzzing rather than failing every answer that carries it.
KNOWN_VALUES = {
    # OpenAI takes 'evals' on upload (CreateFileRequest); its file object's enum omits it.
    ("OpenAIFile", "purpose"): "evals",
    # OpenAI's pause example answers 'paused'; its job status enum omits it (API-NOTES (c)).
    ("FineTuningJob", "status"): "paused",
}


def openai_document(served: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's schema, normalised (OpenAPI 3.0's ``nullable`` and boolean bounds as 3.1's), with only the operations
    ``served`` (Tunery's document) also has; its paths are relative to ``/v1``.

    Its global API-key security is dropped: negative examples would mostly leave the key out, all for one 401
    (tests/api/test_auth.py covers keys); every request carries a valid key instead, as for Tunery's document."""
    ours = {(m, template(p)) for p, item in served["paths"].items() for m in item}
    doc: dict[str, Any] = openai_schema.normalise(yaml.safe_load(openai_schema.SPEC.read_text()))
    paths = {}
    for path, item in doc["paths"].items():
        kept = {m: op for m, op in item.items() if m not in ("get", "post", "delete") or (m, template(path)) in ours}
        if any(m in kept for m in ("get", "post", "delete")):
            paths[path] = kept
    for (name, prop), value in KNOWN_VALUES.items():
        enum = doc["components"]["schemas"][name]["properties"][prop]["enum"]
        assert value not in enum, f"OpenAI's {name}.{prop} now has {value!r}: drop it from KNOWN_VALUES"
        enum.append(value)
    doc.pop("webhooks", None)
    doc.pop("security", None)
    return {**doc, "paths": paths, "servers": [{"url": "/v1"}]}


# ---- the objects the second pass names -----------------------------------------------------------------------------
# Request body fields that name an object: in the second pass they name a real one (see seed_objects).
BODY_OBJECTS = ("model", "training_file")
BODY_OPERATIONS = ("/chat/completions", "/completions", "/fine_tuning/jobs", "/fine_tuning/jobs/dry_run")
# Sent as they are in the second pass, before the generated ones: a generated chat request is seldom one the embedded
# engine serves (tools, logprobs, n > 1, sampling options out of range), and its answers are the richest to check.
KNOWN_GOOD: dict[str, list[dict[str, Any]]] = {
    "/chat/completions": [
        {"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "seed": 1},
        {
            "model": TINY,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ],
}


def authorised(server: RunningServer) -> RunningServer:
    """A server started with SERVER_SETTINGS, its clients given the key."""
    server.http.headers["authorization"] = f"Bearer {API_KEY}"
    server.client = server.client.with_options(api_key=API_KEY)
    return server


def seed_objects(server: RunningServer) -> dict[str, str]:
    """Real objects for the second pass, by the name of the parameter or body field that takes them: a validated
    training file, a pending upload, a queued job (nothing launches on the fuzzing server) with two checkpoints
    recorded as the reporting service records them (the first one's model is the ``{model}`` path parameter), and
    the tiny base model for the bodies' ``model``."""
    http = server.http
    f = http.post("/v1/files", files={"file": ("train.jsonl", chat_lines(12))}, data={"purpose": "fine-tune"})
    f.raise_for_status()
    file_id = f.json()["id"]
    upload = {"filename": "part.jsonl", "purpose": "fine-tune", "bytes": 64, "mime_type": "text/jsonl"}
    upload_id = http.post("/v1/uploads", json=upload).json()["id"]
    r = http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "suffix": "fuzz"})
    r.raise_for_status()
    job_id = r.json()["id"]
    server.wait_job(job_id, {"queued"}, timeout=60)
    with server.app.state.ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.id == job_id))
        assert job is not None and job.fine_tuned_model
        models = []
        for step in (1, 2):
            name = ids.checkpoint_model_name(job.fine_tuned_model, step)
            prefix = f"jobs/{job_id}/checkpoints/step-{step}"
            metrics = {"step": step, "train_loss": 2.0 / step, "valid_loss": 2.0 / step}
            s.add(
                Checkpoint(
                    id=ids.checkpoint_id(),
                    job_id=job_id,
                    created_at=int(time.time()),
                    step_number=step,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=name,
                    object_prefix=prefix,
                )
            )
            s.add(servable_model(job, name, "checkpoint", prefix))
            models.append(name)
    path = {"file_id": file_id, "upload_id": upload_id, "job_id": job_id, "fine_tuning_job_id": job_id}
    path["fine_tuned_model_checkpoint"] = models[0]  # a model to share (checkpoint permissions)
    return {**path, "model": models[0], "body.model": TINY, "body.training_file": file_id}


def _name_objects(case: Any, objects: dict[str, str]) -> None:
    """The second pass: the body's object fields name real objects too (the path's are fixed by the strategy)."""
    if isinstance(case.body, dict):
        for name in BODY_OBJECTS:
            if name in case.body:
                case.body[name] = objects[f"body.{name}"]


# ---- running -------------------------------------------------------------------------------------------------------
@dataclass
class Found:
    """A failure: what failed, how often, and the first request that showed it."""

    document: str
    operation: str
    check: str
    message: str
    request: str
    times: int = 1


@dataclass
class Tally:
    """What was sent: requests per (document, operation), statuses, and the failures found."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: dict[tuple[str, str], Counter[int]] = field(default_factory=dict)
    # generating and sending, per operation
    seconds: defaultdict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    found: dict[tuple[str, str, str, str], Found] = field(default_factory=dict)

    @property
    def failures(self) -> list[Found]:
        return list(self.found.values())

    def record(self, document: str, operation: str, status: int | None, failures: list[Failure], request: str) -> None:
        key = (document, operation)
        self.requests[key] += 1
        if status is not None:
            self.statuses.setdefault(key, Counter())[status] += 1
        for failure in failures:
            message = str(failure.message).strip()
            # One entry per kind of failure of an operation: the first line tells them apart.
            fkey = (document, operation, failure.title, message.splitlines()[0][:120] if message else "")
            if fkey in self.found:
                self.found[fkey].times += 1
            else:
                self.found[fkey] = Found(document, operation, failure.title, message[:2000], request)

    def report(self) -> str:
        lines = [f"{'document':<8} {'operation':<58} {'requests':>8} {'seconds':>7}  statuses"]
        for (document, operation), n in sorted(self.requests.items()):
            statuses = ", ".join(f"{s}: {c}" for s, c in sorted(self.statuses.get((document, operation), {}).items()))
            secs = self.seconds[(document, operation)]
            lines.append(f"{document:<8} {operation:<58} {n:>8} {secs:>7.1f}  {statuses}")
        lines.append(f"total: {sum(self.requests.values())} requests, {len(self.found)} distinct failure(s)")
        for f in self.failures:
            lines += [
                "",
                f"FAILURE [{f.document}] {f.operation}: {f.check} ({f.times}x)",
                f.message,
                "Reproduce with:",
                f"    {f.request}",
            ]
        return "\n".join(lines)


class OutOfTime(Exception):
    """The wall-clock budget ran out in the middle of an operation."""


def _bound(case: Any) -> None:
    """Keep a completion short (see MAX_TOKENS); everything else is sent as generated."""
    if case.path.endswith("/completions") and isinstance(case.body, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                case.body[name] = MAX_TOKENS
        n = case.body.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > MAX_CHOICES:
            case.body["n"] = MAX_CHOICES


@dataclass
class Fuzzer:
    """Send generated requests for every operation of a document to a server and record what the checks say."""

    name: str  # "openai" or "tunery"
    document: dict[str, Any]
    base_url: str  # where the document's paths start
    tally: Tally
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.schema = schemathesis.openapi.from_dict(self.document, config=schemathesis.Config())
        self.checks = CHECKS[self.name]

    def operations(self) -> list[Any]:
        ops = [result.ok() for result in self.schema.get_all_operations()]  # type: ignore[union-attr]
        return sorted(ops, key=lambda op: (any(c in f"{op.method} {op.path}" for c in CHANGES), op.path, op.method))

    def run(
        self,
        examples: int,
        seed: int,
        objects: dict[str, str] | None = None,
        modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
        deadline: float | None = None,
        only: str = ".*",
    ) -> bool:
        """``examples`` generated requests per operation and mode; with ``objects`` (:func:`seed_objects`), again
        with the objects the operation names fixed to real ones. False when ``deadline`` (``time.monotonic()``)
        came first. ``only``: a regular expression the operations' labels (``GET /v1/files``) match."""
        for op in self.operations():
            if not re.fullmatch(only, f"{op.method.upper()} {op.path}"):
                continue
            names = [p.name for p in op.path_parameters]
            variants: list[dict[str, str] | None] = [None]
            named = bool(names) or (op.method == "post" and op.path.removeprefix("/v1") in BODY_OPERATIONS)
            if objects and named and all(n in objects for n in names):
                variants.append(objects)
            for fixed in variants:
                if fixed is not None and op.method == "post":
                    for body in KNOWN_GOOD.get(op.path.removeprefix("/v1"), []):
                        self.send(op.Case(body=copy.deepcopy(body), media_type="application/json"))
                for mode in modes:
                    try:
                        self._operation(op, mode, fixed, examples, seed, deadline)
                    except Unsatisfiable:
                        pass  # nothing of this mode exists (no parameters to make invalid, say)
                    except OutOfTime:
                        return False
        return True

    def _operation(
        self,
        op: Any,
        mode: GenerationMode,
        objects: dict[str, str] | None,
        examples: int,
        seed: int,
        deadline: float | None,
    ) -> None:
        path = {p.name: objects[p.name] for p in op.path_parameters} if objects else None
        started = time.monotonic()
        strategy = op.as_strategy(generation_mode=mode, path_parameters=path)

        @hypothesis_seed(seed)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(case=strategy)
        def send(case: Any) -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise OutOfTime
            if objects:
                _name_objects(case, objects)
            self.send(case)

        try:
            send()
        finally:
            self.tally.seconds[(self.name, f"{op.method.upper()} {op.path}")] += time.monotonic() - started

    def send(self, case: Any) -> None:
        _bound(case)
        headers = {"authorization": f"Bearer {API_KEY}"}
        label = f"{case.operation.method.upper()} {case.operation.path}"
        try:
            response = case.call(base_url=self.base_url, session=self.session, headers=headers, timeout=60)
        except requests.RequestException as e:
            failure = Failure(operation=label, title="No answer", message=f"{type(e).__name__}: {e}")
            request = case.as_curl_command(headers=headers, base_url=self.base_url)
            self.tally.record(self.name, label, None, [failure], request)
            return
        failures: list[Failure] = []
        try:
            case.validate_response(response, checks=self.checks, headers=headers)
        except FailureGroup as group:
            failures = list(group.exceptions)
        request = case.as_curl_command(headers=headers, base_url=self.base_url) if failures else ""
        self.tally.record(self.name, label, response.status_code, failures, request)


DOCUMENTS = ("openai", "tunery")


def fuzzer(document: str, base_url: str, tally: Tally) -> Fuzzer:
    """The fuzzer of one document: ``openai`` (OpenAI's, its paths under /v1) or ``tunery`` (the server's own)."""
    ours = tunery_document(base_url)
    if document == "openai":
        return Fuzzer("openai", openai_document(ours), f"{base_url}/v1", tally)
    return Fuzzer("tunery", ours, base_url, tally)
