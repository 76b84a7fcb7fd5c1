"""Eval reports through the API (docs/evals.md): on a job and its checkpoints, as files and as JSON, over REST and
gRPC; the gate that fails a job with ``eval_gate_failed``; and, on the demo model, the figures that say whether a
fine-tune helped and what it forgot."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from tests.conftest import TINY, chat_lines

pytestmark = pytest.mark.integration


def create(srv, train: bytes, valid: bytes | None, tunery: dict, model: str = TINY, **hp):
    f = srv.client.files.create(file=("train.jsonl", train), purpose="fine-tune")
    v = srv.client.files.create(file=("valid.jsonl", valid), purpose="fine-tune") if valid else None
    job = srv.client.fine_tuning.jobs.create(
        model=model,
        training_file=f.id,
        validation_file=v.id if v else None,
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4, **hp}}},
        extra_body={"tunery": tunery},
    )
    return srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=600)


def test_reports_on_the_job_and_its_checkpoints(tiny_server_factory, tmp_path: Path) -> None:
    srv = tiny_server_factory(data_dir=tmp_path / "state")
    job = create(srv, chat_lines(12), chat_lines(4), {"eval": {"samples": 2, "max_new_tokens": 8}}, n_epochs=2)
    assert job.status == "succeeded", (job.error, srv.events(job.id))
    body = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    summary = body["tunery"]["eval_report"]
    assert body["tunery"]["eval"]["samples"] == 2 and summary["step"] == 6
    assert body["result_files"][1] == summary["file_id"]

    report = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/eval_report").json()
    assert report["model"] == job.fine_tuned_model and report["format"] == "tunery.eval_report.v1"
    assert report["validation"]["model"]["loss"] == pytest.approx(summary["validation_loss"])
    assert len(report["samples"]) == 2 and report["forgetting"]["reference"] == "tunery:reference-v1"
    # The same report as the file (served base64-encoded, as OpenAI serves result files).
    raw = base64.b64decode(srv.client.files.content(summary["file_id"]).read())
    assert json.loads(raw)["validation"] == report["validation"]

    checkpoints = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints").json()["data"]
    assert len(checkpoints) == 2
    for c in checkpoints:
        ref = c["tunery"]["eval_report"]
        assert ref["step"] == c["step_number"] and ref["file_id"]
        one = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints/{c['id']}/eval_report").json()
        assert one["model"] == c["fine_tuned_model_checkpoint"]
        assert one["validation"]["model"]["loss"] == pytest.approx(ref["validation_loss"])

    # Not found, in OpenAI's shape: an unknown checkpoint, another project's job.
    r = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints/ftckpt_nope/eval_report")
    assert r.status_code == 404 and r.json()["error"]["param"] == "checkpoint_id"
    assert srv.http.get("/v1/fine_tuning/jobs/ftjob-nope/eval_report").status_code == 404

    # The terminal's view: tunery jobs report (and its --json).
    from typer.testing import CliRunner

    from api.cli import app

    cli = CliRunner(env={"COLUMNS": "250"})
    args = ["jobs", "report", job.id, "--base-url", f"{srv.base_url}/v1", "--api-key", "test-key"]
    out = cli.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert job.fine_tuned_model in out.output
    for heading in ("Validation", "Forgetting on tunery:reference-v1", "Samples", "Hardest validation examples"):
        assert heading in out.output
    assert f"{report['validation']['model']['loss']:.4f}" in out.output
    out = cli.invoke(app, [*args, "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["validation"] == report["validation"]
    out = cli.invoke(app, [*args, "--checkpoint", checkpoints[0]["id"]])
    assert out.exit_code == 0 and checkpoints[0]["fine_tuned_model_checkpoint"] in out.output
    out = cli.invoke(app, ["jobs", "report", "ftjob-nope", *args[3:]])
    assert out.exit_code == 1 and "No such fine-tuning job" in out.output

    # The same job over gRPC carries the same summary.
    from tunery.v1 import fine_tuning_pb2, fine_tuning_pb2_grpc

    with grpc.insecure_channel(srv.app.state.grpc_address) as channel:
        stub = fine_tuning_pb2_grpc.FineTuningServiceStub(channel)
        meta = (("authorization", "Bearer test-key"),)
        got = stub.GetJob(fine_tuning_pb2.GetJobRequest(job_id=job.id), metadata=meta)
        assert got.tunery.eval_report.file_id == summary["file_id"]
        assert got.tunery.eval_report.validation_loss == pytest.approx(summary["validation_loss"])
        listed = stub.ListCheckpoints(fine_tuning_pb2.ListCheckpointsRequest(job_id=job.id), metadata=meta)
        assert {c.tunery.eval_report.step for c in listed.data} == {c["step_number"] for c in checkpoints}
        # ... and the whole reports: REST's JSON, as a Struct.
        whole = stub.GetJobEvalReport(fine_tuning_pb2.JobRequest(job_id=job.id), metadata=meta)
        assert json_format.MessageToDict(whole.report) == json.loads(json.dumps(report))
        one = stub.GetCheckpointEvalReport(
            fine_tuning_pb2.GetCheckpointEvalReportRequest(job_id=job.id, checkpoint_id=checkpoints[0]["id"]),
            metadata=meta,
        )
        assert one.report["model"] == checkpoints[0]["fine_tuned_model_checkpoint"]


def test_a_gate_no_model_passes_fails_the_job_with_its_report(tiny_server_factory, tmp_path: Path) -> None:
    srv = tiny_server_factory(data_dir=tmp_path / "state")
    gate = {"min_validation_improvement": 0.999}
    job = create(srv, chat_lines(12), chat_lines(4), {"eval": {"samples": 0, "gate": gate}}, n_epochs=2)
    assert job.status == "failed" and job.error.code == "eval_gate_failed", srv.events(job.id)
    assert job.fine_tuned_model is None
    body = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    assert body["tunery"]["eval_report"]["gate_passed"] is False
    assert body["result_files"] == [body["tunery"]["eval_report"]["file_id"]]
    report = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/eval_report").json()
    assert report["gate"]["passed"] is False and report["gate"]["checks"][0]["name"] == "min_validation_improvement"
    # The checkpoints are kept for inspection, each with its report.
    checkpoints = srv.client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 2
    models = {m.id for m in srv.client.models.list().data}
    assert all(c.fine_tuned_model_checkpoint in models for c in checkpoints)


def test_bad_eval_options_are_refused(tiny_server_factory, tmp_path: Path) -> None:
    srv = tiny_server_factory(data_dir=tmp_path / "state")
    f = srv.client.files.create(file=("train.jsonl", chat_lines(4)), purpose="fine-tune")
    for tunery, param in (
        ({"eval": {"samples": -1}}, "tunery.eval.samples"),
        ({"eval": {"gate": {"max_forgeting": 0.1}}}, "tunery.eval.gate.max_forgeting"),
        ({"eval": {"gate": {"min_validation_improvement": 2}}}, "tunery.eval.gate.min_validation_improvement"),
    ):
        r = srv.http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": f.id, "tunery": tunery})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


def test_a_job_may_name_its_own_reference_set(tiny_server_factory, tmp_path: Path) -> None:
    srv = tiny_server_factory(data_dir=tmp_path / "state")
    reference = srv.client.files.create(file=("general.jsonl", chat_lines(5, "Plain: {q}")), purpose="fine-tune")
    job = create(srv, chat_lines(12), None, {"eval": {"samples": 0, "reference_file": reference.id}}, n_epochs=1)
    assert job.status == "succeeded", (job.error, srv.events(job.id))
    report = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}/eval_report").json()
    assert report["forgetting"]["reference"] == reference.id
    assert report["forgetting"]["base"]["examples"] == 5
    assert report["validation"] is None and any("no validation file" in m for m in report["missing"])
    # A reference set must be chat examples: preference pairs fail the job at validation, naming the parameter.
    pairs = "\n".join(
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": f"Q{i}?"}]},
                "preferred_output": [{"role": "assistant", "content": "yes"}],
                "non_preferred_output": [{"role": "assistant", "content": "no"}],
            }
        )
        for i in range(3)
    )
    bad = srv.client.files.create(file=("pairs.jsonl", pairs.encode()), purpose="fine-tune")
    job = create(srv, chat_lines(12), None, {"eval": {"reference_file": bad.id}}, n_epochs=1)
    assert job.status == "failed" and job.error.code == "invalid_reference_file"
    assert job.error.param == "tunery.eval.reference_file"
    # An unknown file is refused when the job is created.
    r = srv.http.post(
        "/v1/fine_tuning/jobs",
        json={"model": TINY, "training_file": reference.id, "tunery": {"eval": {"reference_file": "file-nope"}}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tunery.eval.reference_file", r.text


def test_a_job_promotes_its_model_to_an_alias_only_when_it_passes_its_gate(tiny_server_factory, tmp_path: Path) -> None:
    srv = tiny_server_factory(data_dir=tmp_path / "state")
    passing = {"samples": 0, "gate": {"min_validation_improvement": 0.0}, "promote_to_alias": "support-bot"}
    job = create(srv, chat_lines(12), chat_lines(4), {"eval": passing}, n_epochs=1)
    assert job.status == "succeeded", (job.error, srv.events(job.id))
    alias = srv.http.get("/v1/tunery/aliases/support-bot").json()
    assert alias["model"] == job.fine_tuned_model and alias["version"] == 1
    (version,) = srv.http.get("/v1/tunery/aliases/support-bot/history").json()["data"]
    assert version["actor"]["type"] == "job" and version["actor"]["id"] == job.id
    assert version["eval_report"]["gate_passed"] is True
    assert any("Promoted" in m and "support-bot" in m for m in srv.events(job.id))
    answer = srv.client.chat.completions.create(
        model="support-bot", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.model == "support-bot"

    # A job whose models fail the gate leaves the alias where it was.
    failing = {**passing, "gate": {"min_validation_improvement": 0.999}}
    second = create(srv, chat_lines(12), chat_lines(4), {"eval": failing}, n_epochs=1)
    assert second.status == "failed" and second.error.code == "eval_gate_failed"
    after = srv.http.get("/v1/tunery/aliases/support-bot").json()
    assert after["model"] == job.fine_tuned_model and after["version"] == 1

    # Refused at creation: a promotion without a gate, a name that is not an alias's.
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    for options in ({"promote_to_alias": "support-bot"}, {"gate": {"max_forgetting": 0.1}, "promote_to_alias": "Bad!"}):
        r = srv.http.post(
            "/v1/fine_tuning/jobs", json={"model": TINY, "training_file": f.id, "tunery": {"eval": options}}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "tunery.eval.promote_to_alias", r.text
