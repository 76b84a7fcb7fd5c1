"""The job state machine (tunery/jobstate.py): the allowed transitions as a table, and the typed job error."""

from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path

import pytest

from tunery import jobstate
from tunery.db import Job
from tunery.jobstate import (
    TARGET,
    TERMINAL,
    TRANSITIONS,
    ErrorCode,
    IllegalTransition,
    JobError,
    JobStatus,
    Transition,
    UnknownErrorCode,
)

ROOT = Path(__file__).resolve().parents[2]
S = JobStatus
T = Transition
AT = 1_700_000_000
ERROR = JobError(ErrorCode.training_error, "boom", None)

# The allowed moves, written out again by hand: the table in tunery/jobstate.py must say exactly this.
EXPECTED = {
    (S.validating_files, S.queued): T.queue,
    (S.validating_files, S.failed): T.fail,
    (S.validating_files, S.cancelled): T.cancel,
    (S.queued, S.running): T.start,
    (S.queued, S.succeeded): T.succeed,
    (S.queued, S.failed): T.fail,
    (S.queued, S.cancelled): T.cancel,
    (S.running, S.queued): T.requeue,
    (S.running, S.paused): T.pause,
    (S.running, S.succeeded): T.succeed,
    (S.running, S.failed): T.fail,
    (S.running, S.cancelled): T.cancel,
    (S.paused, S.queued): T.resume,
    (S.paused, S.succeeded): T.succeed,
    (S.paused, S.failed): T.fail,
    (S.paused, S.cancelled): T.cancel,
}


def _job(status: JobStatus, *, run_handle: str | None = "pid:1") -> Job:
    return Job(
        id="ftjob-x",
        status=status.value,
        error=None,
        finished_at=None,
        started_at=None,
        estimated_finish=AT + 60,
        pause_requested=status is S.paused,
        cancel_requested=False,
        run_token="tok",
        run_handle=run_handle,
    )


def _apply(job: Job, transition: Transition) -> None:
    if transition is T.fail:
        jobstate.fail(job, ERROR, AT)
    elif transition in (T.start, T.succeed, T.cancel):
        getattr(jobstate, transition.value)(job, AT)
    else:
        getattr(jobstate, transition.value)(job)


def test_the_table_is_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED
    assert set(TARGET) == set(Transition)  # every transition leads somewhere
    assert not any(frm in TERMINAL for frm, _ in TRANSITIONS)  # nothing leaves a terminal status
    assert not any(to is S.validating_files for _, to in TRANSITIONS)  # only a new job validates its files


@pytest.mark.parametrize(
    ("frm", "to"), list(itertools.product(JobStatus, JobStatus)), ids=lambda s: s.value if isinstance(s, S) else s
)
def test_every_pair(frm: JobStatus, to: JobStatus) -> None:
    """Every (from, to) pair, through every transition that leads to ``to``: the one the table names for the pair
    succeeds and sets the job's fields; every other raises IllegalTransition and leaves the job alone."""
    for transition in (t for t in Transition if TARGET[t] is to):
        job = _job(frm)
        before = dict(job.__dict__)
        if EXPECTED.get((frm, to)) is transition:
            assert jobstate.allowed(job, transition)
            _apply(job, transition)
            assert job.status == to and type(job.status) is str
            _check_fields(job, transition)
        else:
            assert not jobstate.allowed(job, transition)
            with pytest.raises(IllegalTransition) as e:
                _apply(job, transition)
            assert (e.value.current, e.value.target, e.value.transition) == (frm, to, transition)
            assert job.__dict__ == before


def _check_fields(job: Job, transition: Transition) -> None:
    ended = transition in (T.succeed, T.fail, T.cancel)
    assert job.finished_at == (AT if ended else None)
    assert job.error == (ERROR.to_json() if transition is T.fail else None)
    assert job.cancel_requested is (transition is T.cancel)
    assert job.started_at == (AT if transition is T.start else None)
    if ended or transition is T.pause:
        assert job.estimated_finish is None
    if transition is T.pause:
        assert job.pause_requested is True
    if transition is T.requeue:
        assert job.pause_requested is False


def test_resume_keeps_the_pause_flag_while_the_paused_run_still_saves_its_state() -> None:
    live = _job(S.paused, run_handle="pid:1")
    jobstate.resume(live)
    assert (live.status, live.pause_requested, live.run_token) == (S.queued, True, "tok")
    over = _job(S.paused, run_handle=None)
    jobstate.resume(over)
    assert (over.status, over.pause_requested, over.run_token) == (S.queued, False, None)
    jobstate.pause_done(live)  # the scheduler reaped the paused run
    assert (live.status, live.pause_requested, live.run_token) == (S.queued, False, None)


def test_a_new_job_validates_its_files() -> None:
    job = Job(id="ftjob-new")
    jobstate.create(job)
    assert (job.status, job.error, job.finished_at, job.cancel_requested, job.pause_requested) == (
        "validating_files",
        None,
        None,
        False,
        False,
    )
    assert not jobstate.allowed(Job(id="ftjob-none"), T.fail)  # no status yet: no transition
    assert not jobstate.allowed(Job(id="ftjob-odd", status="nonsense"), T.fail)


def test_statuses_are_openai_s_plus_paused() -> None:
    assert {s.value for s in JobStatus} == {
        "validating_files",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "paused",
    }
    assert {"succeeded", "failed", "cancelled"} == TERMINAL
    assert {"validating_files", "running"} == jobstate.OWNED


# ---- the job error ------------------------------------------------------------------------------------------------


def test_job_error_round_trips_through_the_json_column() -> None:
    err = JobError(ErrorCode.invalid_training_file, "bad line 3", "training_file")
    stored = json.loads(json.dumps(err.to_json()))
    assert stored == {"code": "invalid_training_file", "message": "bad line 3", "param": "training_file"}
    assert JobError.from_json(stored) == err
    assert JobError.from_json({"code": "server_error", "message": "x"}) == JobError(ErrorCode.server_error, "x")


def test_unregistered_codes_are_refused() -> None:
    with pytest.raises(UnknownErrorCode):
        JobError("no_such_code", "x")  # type: ignore[arg-type]
    with pytest.raises(UnknownErrorCode):
        JobError.from_json({"code": "no_such_code", "message": "x", "param": None})
    with pytest.raises(UnknownErrorCode):
        jobstate.error_code("")
    assert JobError("quota_exceeded", "x").code is ErrorCode.quota_exceeded  # type: ignore[arg-type]


def _strings(expr: ast.expr) -> set[str]:
    """The strings an expression can evaluate to: a literal, either branch of ``a if c else b``, a dict's values,
    the default of ``table.get(key, default)``."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        return _strings(expr.body) | _strings(expr.orelse)
    if isinstance(expr, ast.Dict):
        return set().union(*(_strings(v) for v in expr.values))
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "get":
        return set().union(*(_strings(a) for a in expr.args[1:]))
    return set()


def _trainer_codes() -> set[str]:
    """Every error code trainer/ writes: ``code=`` keywords, ``code = ...`` assignments, its file-code table
    (reporter.py's ``code`` is a gRPC status, not a job error code)."""
    codes: set[str] = set()
    for path in (ROOT / "trainer").rglob("*.py"):
        if path.name == "reporter.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg in ("code", "error_code"):
                codes |= _strings(node.value)
            if isinstance(node, ast.Assign) and {ast.unparse(t) for t in node.targets} & {"code", "_FILE_CODES"}:
                codes |= _strings(node.value)
    return codes


def test_every_code_the_trainer_reports_is_registered() -> None:
    """The trainer (which never imports the control plane) reports its codes over gRPC; a job fails with them."""
    codes = _trainer_codes()
    assert {"training_error", "invalid_training_file", "unsupported_hardware"} <= codes  # the scan finds them
    assert codes <= {c.value for c in ErrorCode}


def test_an_unregistered_reported_code_fails_the_job_as_a_training_error() -> None:
    from scheduler.reporting import reported_error
    from tunery.v1 import reporting_pb2 as pb

    assert reported_error(pb.FinishedRequest(error_code="from_a_newer_trainer", error_message="m")) == JobError(
        ErrorCode.training_error, "m"
    )
    assert reported_error(pb.FinishedRequest(error_code="", error_message="")) == JobError(
        ErrorCode.training_error, "Training failed."
    )
    assert reported_error(
        pb.FinishedRequest(error_code="invalid_hyperparameters", error_message="m", error_param="p")
    ) == JobError(ErrorCode.invalid_hyperparameters, "m", "p")


def test_file_error_codes_and_the_failure_event_have_one_home() -> None:
    """The scheduler's validation and the trainer name a bad file's code the same way (tunery.jobstate)."""
    assert jobstate.file_error_code("training_file") is ErrorCode.invalid_training_file
    assert jobstate.file_error_code("validation_file") is ErrorCode.invalid_validation_file
    assert jobstate.file_error_code(jobstate.MIX_PARAM) is ErrorCode.invalid_mix_file
    error = JobError(ErrorCode.training_error, "out of memory", None)
    assert jobstate.failure_event(error) == "Fine-tuning job failed: out of memory"
    for path in ("scheduler", "trainer"):
        for source in (ROOT / path).rglob("*.py"):
            text = source.read_text()
            assert "Fine-tuning job failed:" not in text, source
            assert '"tunery.data.mix.file"' not in text, source
