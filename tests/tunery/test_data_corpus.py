"""The malformed training-file corpus (tests/data/malformed, written by tests/data/make_malformed.py).

(a) every file, validated as the scheduler validates it, gives exactly the expected error code, line and field;
(b) a few of them go through the real API: upload with the SDK, create a job, and the job fails in validation
with the code and the line number in its message.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from scheduler.validation import check_file
from tests.conftest import TINY
from tunery.storage import LocalObjectStore

CORPUS = Path(__file__).resolve().parents[1] / "data" / "malformed"
EXPECTED: dict[str, dict[str, object]] = json.loads((CORPUS / "expected.json").read_text())


def test_corpus_is_complete():
    files = {p.name for p in CORPUS.glob("*.jsonl")}
    assert files == set(EXPECTED), "run python tests/data/make_malformed.py"
    assert len(files) >= 40


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_is_rejected_with_line_and_field(name, tmp_path):
    store = LocalObjectStore(tmp_path)
    store.put_bytes("f", (CORPUS / name).read_bytes())
    expected = EXPECTED[name]
    check = check_file(store, "f", "file-abc", "training_file")
    assert check.error is not None, name
    assert check.error.code == expected["code"]
    assert check.error.param == "training_file"
    assert (check.line, check.field) == (expected["line"], expected["field"]), check.error.message
    message = check.error.message or ""
    assert str(expected["contains"]) in message
    if expected["line"] is not None:
        assert f"line {expected['line']}" in message


API_CASES = [
    "invalid_json.jsonl",
    "tool_call_without_result.jsonl",
    "mixed_chat_then_alpaca.jsonl",
    "sharegpt_unknown_from.jsonl",
    "pref_two_preferred.jsonl",
]


def test_malformed_files_fail_jobs_through_the_api(server, upload):
    """A job whose file is still being validated fails when the validation does; a file whose validation finished
    first is refused at creation. Which one happens is a race (the validation is fast): both give the line."""
    jobs, refused = {}, {}
    for name in API_CASES:
        f = upload((CORPUS / name).read_bytes(), name=name)
        try:
            jobs[name] = server.client.fine_tuning.jobs.create(model=TINY, training_file=f.id).id
        except openai.BadRequestError as e:
            refused[name] = e
    for name, e in refused.items():
        expected = EXPECTED[name]
        error = e.body if isinstance(e.body, dict) else {}
        assert error.get("param") == "training_file", (name, error)
        assert f"line {expected['line']}" in str(error.get("message")), (name, error)
        assert str(expected["contains"]) in str(error.get("message")), (name, error)
    for name, job_id in jobs.items():
        expected = EXPECTED[name]
        job = server.wait_job(job_id, {"failed"}, timeout=120)
        assert job.error.code == expected["code"], (name, job.error)
        assert job.error.param == "training_file"
        assert f"line {expected['line']}" in job.error.message, (name, job.error.message)
        assert str(expected["contains"]) in job.error.message
        assert not any("queued" in m or "started" in m for m in server.events(job_id))
