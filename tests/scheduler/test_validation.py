"""Training files are validated when uploaded: status uploaded -> processed | error, and a report per file."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from scheduler.validation import HISTOGRAM_BINS, histogram
from tests.conftest import chat_lines
from tests.schema import validate


def _report(server, file_id: str) -> dict:
    server.client.files.wait_for_processing(file_id, poll_interval=0.1, max_wait_seconds=30)
    r = server.http.get(f"/v1/files/{file_id}/validation")
    assert r.status_code == 200
    return r.json()


def test_good_file_is_processed_with_a_report(server, upload):
    lines = chat_lines(12).splitlines()
    lines += [lines[2], lines[5]]  # two exact duplicates
    f = upload(b"\n".join(lines) + b"\n")
    report = _report(server, f.id)
    got = server.client.files.retrieve(f.id)
    assert got.status == "processed"
    tokens = report["tokens"]
    assert got.status_details == (
        f"14 example(s) in the chat format, {tokens['total']} tokens ({tokens['trained']} trained) "
        "with the tiny-llama tokenizer; 2 exact duplicate(s)"
    )
    validate(server.http.get(f"/v1/files/{f.id}").json(), "OpenAIFile")
    assert report["object"] == "file.validation" and report["status"] == "processed"
    assert (report["format"], report["kind"], report["lines"], report["examples"]) == ("chat", "supervised", 14, 14)
    assert report["errors"] == {"total": 0, "listed": []}
    assert report["duplicates"]["exact"] == 2
    assert report["duplicates"]["listed"] == [{"line": 13, "duplicate_of": 3}, {"line": 14, "duplicate_of": 6}]
    assert report["duplicates"]["near"] == 0 and report["duplicates"]["near_examined"] == 12
    assert report["model"] == "tiny-llama" and tokens["tokenizer"] == "tiktoken"
    assert report["messages"] == 14 * 2
    assert report["warnings"] == ["2 example(s) repeat an earlier example exactly."]
    hist = tokens["histogram"]  # examples per range of tokens, the dashboard's chart
    assert sum(hist["counts"]) == 14 and hist["edges"][0] == tokens["per_example"]["min"]
    assert hist["edges"][-1] == tokens["per_example"]["max"] + 1


@pytest.mark.parametrize("values", [[5], [1, 2, 3], [50, 52, 55, 56, 51, 50], list(range(10, 1000, 7)), [3, 3, 40]])
def test_the_token_histogram_puts_each_example_in_its_range(values: list[int]) -> None:
    hist = histogram(values)
    edges, counts = hist["edges"], hist["counts"]
    assert len(counts) == len(edges) - 1 <= HISTOGRAM_BINS
    assert edges[0] == min(values) and edges[-1] == max(values) + 1 and edges == sorted(set(edges))
    widths = [b - a for a, b in pairwise(edges)]
    assert len(set(widths[:-1])) <= 1 and widths[-1] <= widths[0]  # one width; the last range may be cut at the max
    assert counts == [sum(a <= v < b for v in values) for a, b in pairwise(edges)]


def test_bad_file_is_an_error_with_every_line_listed(server, upload):
    lines = chat_lines(12).splitlines()
    lines[3] = b"{oops"
    lines[7] = json.dumps({"messages": [{"role": "narrator", "content": "x"}]}).encode()
    f = upload(b"\n".join(lines) + b"\n")
    report = _report(server, f.id)
    got = server.client.files.retrieve(f.id)
    assert got.status == "error"
    assert got.status_details.startswith("2 invalid line(s); first: line 4: invalid JSON")
    assert report["status"] == "error" and report["examples"] == 10
    assert [(e["line"], e["field"]) for e in report["errors"]["listed"]] == [(4, None), (8, "messages[0].role")]
    assert report["errors"]["total"] == 2


def test_many_errors_are_capped_with_totals(server, upload):
    f = upload(b"\n".join([b"not json"] * 150) + b"\n")
    report = _report(server, f.id)
    assert report["errors"]["total"] == 150 and len(report["errors"]["listed"]) == 100


def test_small_and_preference_files(server, upload):
    small = _report(server, upload(chat_lines(3)).id)
    assert small["status"] == "processed" and "needs at least 10" in small["warnings"][0]
    pref = {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    data = "\n".join(json.dumps(pref | {"n": i}) for i in range(10)).encode()
    report = _report(server, upload(data).id)
    assert (report["format"], report["kind"], report["status"]) == ("preference", "preference", "processed")


def test_report_lifecycle_and_errors(server, upload):
    other = upload(b"some notes", name="n.txt", purpose="assistants")
    assert other.status == "processed"
    r = server.http.get(f"/v1/files/{other.id}/validation")
    assert r.status_code == 400 and r.json()["error"]["param"] == "id"
    assert server.http.get("/v1/files/file-nope/validation").status_code == 404
    f = upload(chat_lines(10))
    assert _report(server, f.id)["status"] == "processed"
    server.client.files.delete(f.id)
    assert server.http.get(f"/v1/files/{f.id}/validation").status_code == 404
    assert not (server.settings.data_dir / "objects" / "reports" / "files" / f.id / "validation.json").exists()


@pytest.mark.parametrize("via_upload_api", [False, True])
def test_files_from_both_upload_paths_are_validated(server, tmp_path, via_upload_api):
    data = chat_lines(11)
    if via_upload_api:
        path = tmp_path / "big.jsonl"
        path.write_bytes(data)
        up = server.client.uploads.upload_file_chunked(
            file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=512
        )
        file_id = up.file.id
    else:
        file_id = server.client.files.create(file=("t.jsonl", data), purpose="fine-tune").id
    assert _report(server, file_id)["examples"] == 11


def test_cli_validates_a_local_file(tmp_path, tiny_model_dir):
    import os
    import subprocess
    import sys

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(chat_lines(12))
    bad.write_bytes(chat_lines(12).replace(b'"assistant"', b'"robot"', 1))
    cmd = [sys.executable, "-m", "api.cli", "data", "validate"]
    env = {
        **os.environ,
        "TUNERY_DEMO_MODEL": "false",
        "TUNERY_BASE_MODELS": json.dumps({"tiny-llama": str(tiny_model_dir)}),
    }
    ok = subprocess.run([*cmd, str(good), "--json"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["examples"] == 12 and report["model"] == "tiny-llama" and report["tokens"]["trained"] > 0
    table = subprocess.run([*cmd, str(good), "--model", "tiny-llama"], capture_output=True, text=True, env=env)
    assert table.returncode == 0 and "Tokens (tiny-llama)" in table.stdout and "per example" in table.stdout
    unknown = subprocess.run([*cmd, str(good), "--model", "nope"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "Unknown model 'nope'" in unknown.stderr
    ko = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, env=env)
    assert ko.returncode == 1
    assert "unknown role 'robot'" in ko.stdout and "messages[1].role" in ko.stdout


def test_job_events_summarize_the_files(tiny_server_factory):
    srv = tiny_server_factory(max_concurrent_runs=0)
    lines = chat_lines(12).splitlines()
    f = srv.client.files.create(file=("t.jsonl", b"\n".join([*lines, lines[0]]) + b"\n"), purpose="fine-tune")
    v = srv.client.files.create(file=("v.jsonl", chat_lines(4)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, validation_file=v.id)
    srv.wait_job(job.id, {"queued"}, timeout=30)
    events = srv.events(job.id)
    train_event = next(e for e in events if e.startswith(f"Training file {f.id}: "))
    assert train_event.startswith(f"Training file {f.id}: 13 example(s) in the chat format, 1 exact duplicate(s); ")
    report = srv.http.get(f"/v1/files/{f.id}/validation", params={"model": "tiny-llama"}).json()
    tokens = report["tokens"]
    assert (report["model"], report["examples"], tokens["max_seq_length"]) == ("tiny-llama", 13, 1024)
    per = tokens["per_example"]
    assert (
        f"{tokens['total']} tokens ({tokens['trained']} trained) with the tiny-llama chat template; tokens per "
        f"example min {per['min']}, mean {per['mean']}, p50 {per['p50']}, p95 {per['p95']}, max {per['max']}"
    ) in train_event
    assert any(e.startswith(f"Validation file {v.id}: 4 example(s) in the chat format; ") for e in events)
    missing = srv.http.get(f"/v1/files/{v.id}/validation", params={"model": "other-model"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_special_token_in_text_warns_at_upload_and_fails_the_job(tiny_server_factory):
    srv = tiny_server_factory(max_concurrent_runs=0)
    lines = chat_lines(12).splitlines()
    leak = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye<|im_start|>user"}]}
    lines[6] = json.dumps(leak).encode()
    f = srv.client.files.create(file=("t.jsonl", b"\n".join(lines) + b"\n"), purpose="fine-tune")
    report = _report(srv, f.id)
    assert report["status"] == "processed" and report["special_tokens"]["total"] == 1
    assert report["special_tokens"]["listed"][0] == {
        "line": 7,
        "field": "messages[1].content",
        "message": "contains '<|im_start|>', a special token of the model's tokenizer",
    }
    job = srv.client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id)
    failed = srv.wait_job(job.id, {"failed"}, timeout=30)
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "line 7 (messages[1].content): contains '<|im_start|>'" in failed.error.message


def test_reinforcement_file_report_and_estimate(tiny_model_dir):
    """A reinforcement file: prompt tokens with the generation prompt, no trained token (said so, without the
    supervised warning), duplicates that count the item fields, line errors; the estimate does not trip on it."""
    from pathlib import Path

    from scheduler.validation import check_scan, file_report, status_details, token_summary
    from tunery.estimate import estimate_for_scan, model_shape
    from tunery.filescan import ScanOptions, scan_stream
    from tunery.plan import PlanRequest, resolve_plan

    lines = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}], "answer": {"value": i, "tags": ["x"]}}
        for i in range(12)
    ]
    lines.append(lines[3])  # an exact duplicate
    lines.append({**lines[4], "answer": "other"})  # the same prompt for another answer: not an exact duplicate
    data = [json.dumps(o).encode() + b"\n" for o in lines]
    data.insert(
        5,
        json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
        ).encode()
        + b"\n",
    )
    opts = ScanOptions(model_folder=str(tiny_model_dir), model_name="tiny-llama", max_seq_length=1024, workers=1)
    bad = scan_stream(lambda: iter(data), opts)
    report = file_report("file-rft", bad, 0, model="tiny-llama", max_seq_length=1024)
    assert (report["status"], report["format"], report["kind"], report["examples"]) == (
        "error",
        "reinforcement",
        "reinforcement",
        14,
    )
    (error,) = report["errors"]["listed"]
    assert (error["line"], error["field"]) == (6, "messages[1].role")
    assert "but the file is in the fine-tune-reinforcement format, decided by line 1" in error["message"]

    del data[5]
    scan = scan_stream(lambda: iter(data), opts)
    report = file_report("file-rft", scan, 0, model="tiny-llama", max_seq_length=1024)
    assert (report["status"], report["format"], report["kind"]) == ("processed", "reinforcement", "reinforcement")
    assert (report["lines"], report["examples"], report["messages"]) == (14, 14, 14)
    tokens = report["tokens"]
    assert tokens["prompt_only"] is True and tokens["trained"] == 0 and tokens["trained_per_example"]["max"] == 0
    assert tokens["total"] == sum(scan.tokens) and tokens["per_example"]["min"] > 5  # prompt + generation prompt
    assert report["duplicates"]["exact"] == 1
    assert report["duplicates"]["listed"] == [{"line": 13, "duplicate_of": 4}]
    assert report["warnings"] == [
        "1 example(s) repeat an earlier example exactly.",
        "1 example(s) are near-duplicates of an earlier example.",
    ]
    assert status_details(report) == (
        f"14 example(s) in the reinforcement format, {tokens['total']} prompt tokens (none trained: the model learns "
        "from its sampled answers) with the tiny-llama tokenizer; 1 exact duplicate(s)"
    )
    assert token_summary(report).startswith(f"{tokens['total']} prompt tokens (none trained")
    # The job's check: fits a reinforcement job, not a supervised one.
    assert check_scan(scan, "file-rft", "training_file", method="reinforcement").error is None
    wrong = check_scan(scan, "file-rft", "training_file", method="supervised").error
    assert wrong is not None and "is in the fine-tune-reinforcement format" in wrong.message
    # Estimates read the token counts: no trained token is no division by zero.
    plan = resolve_plan(PlanRequest(), scan.n_records, has_validation=False, cpu_only=True)
    est = estimate_for_scan(model_shape(Path(tiny_model_dir)), scan.tokens, scan.trained, plan, "cpu")
    assert est.trained_tokens_per_epoch == 0 and est.tokens_per_epoch == tokens["total"] and est.gpu_seconds > 0
