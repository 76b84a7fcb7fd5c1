"""Merged-model exports (``/v1/tunery/exports``, docs/exports.md): a fine-tuned model trained by the real trainer,
exported by the real trainer as safetensors (through ``tunery exports create --wait --out``) and as GGUF (through the
API), its result file downloaded, unpacked and loaded with transformers, its logits those of the adapter on its base;
the refusals; cancel; a trainer that fails.

Files and fine-tuning jobs go through the official OpenAI SDK; the export routes, which the SDK does not know,
through plain HTTP."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api.cli import app
from api.protocol.exports import Export
from tests.api.test_evaluations import cli_args, stored_model
from tests.conftest import TINY, RunningServer, chat_lines
from tests.schema import validate

EX = "/v1/tunery/exports"
DONE = {"succeeded", "failed", "cancelled"}
CLI = CliRunner(env={"COLUMNS": "250"})


def validate_export(ex: dict[str, Any]) -> None:
    """The object is what the API publishes (its OpenAPI schema's ``Export``), every field typed."""
    assert Export.model_validate(ex).model_dump(mode="json") == ex


def wait_export(srv: RunningServer, export_id: str, statuses: set[str], timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ex = srv.http.get(f"{EX}/{export_id}").json()
        if ex["status"] in statuses:
            return ex
        time.sleep(0.3)
    raise TimeoutError(f"export {export_id} still {ex['status']}")


def logits(model: Any, tokenizer: Any) -> Any:
    import torch

    ids = tokenizer("Question number 3? BEEP BOOP", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.integration
def test_a_model_is_exported_merged_downloaded_and_loaded_as_a_plain_model(
    server: RunningServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = server.client
    train = c.files.create(file=("train.jsonl", chat_lines(10)), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model=TINY,
        training_file=train.id,
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}},
        extra_body={"tunery": {"eval": {"enabled": False}}},
    )
    job = server.wait_job(job.id, DONE, timeout=240)
    assert job.status == "succeeded", (job.error, server.events(job.id))
    model = job.fine_tuned_model
    checkpoint = min(c.fine_tuning.jobs.checkpoints.list(job.id).data, key=lambda k: k.step_number)

    # safetensors through `tunery exports create --wait --out`: the merged folder, unpacked.
    out = CLI.invoke(app, ["exports", "create", model, "--wait", "--out", str(tmp_path / "home"), *cli_args(server)])
    assert out.exit_code == 0, out.output
    folder = Path(out.output.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "home" and (folder / "config.json").is_file()
    assert {p.name for p in folder.glob("*.safetensors")} and not list(folder.glob("adapter_*"))

    # Its logits are the adapter's on the base (PEFT), within float32 rounding.
    store = server.app.state.ctx.store
    adapter = tmp_path / "adapter"
    store.get_dir(f"jobs/{job.id}/model", adapter)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    want, got = logits(with_adapter, tokenizer), logits(merged, tokenizer)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    untouched = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    assert not torch.allclose(logits(untouched, tokenizer), want, atol=1e-4)  # the adapter changed something

    exports = server.http.get(EX).json()["data"]
    assert len(exports) == 1
    ex = exports[0]
    validate_export(ex)
    assert ex["id"].startswith("exportjob-") and ex["object"] == "tunery.export"
    assert (ex["status"], ex["model"], ex["base_model"], ex["format"], ex["dtype"], ex["gguf_type"]) == (
        "succeeded",
        model,
        TINY,
        "safetensors",
        "float32",
        None,
    )
    assert ex["error"] is None and ex["finished_at"] >= ex["created_at"]
    f = c.files.retrieve(ex["result_file"])
    assert f.purpose == "fine-tune-results" and f.filename.endswith(".tar.gz")
    # The SDK reads it as any fine-tune-results file: base64 of the archive.
    archive = base64.b64decode(c.files.content(f.id).content)
    assert len(archive) == f.bytes
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert {m.name.split("/")[0] for m in tar.getmembers()} == {folder.name}

    # GGUF of the checkpoint model through the API.
    r = server.http.post(EX, json={"model": checkpoint.fine_tuned_model_checkpoint, "format": "gguf"})
    assert r.status_code == 200, r.text
    ex = r.json()
    validate_export(ex)
    assert (ex["status"], ex["format"], ex["gguf_type"], ex["result_file"]) == ("validating_files", "gguf", "f16", None)
    ex = wait_export(server, ex["id"], DONE)
    assert ex["status"] == "succeeded", ex
    f = c.files.retrieve(ex["result_file"])
    assert f.purpose == "fine-tune-results" and f.filename.endswith(".gguf")
    gguf = base64.b64decode(c.files.content(f.id).content)
    assert gguf.startswith(b"GGUF") and len(gguf) == f.bytes
    out = CLI.invoke(app, ["exports", "get", ex["id"], *cli_args(server)])
    assert out.exit_code == 0 and Export.model_validate_json(out.output).result_file == f.id
    out = CLI.invoke(app, ["exports", "list", *cli_args(server)])
    assert out.exit_code == 0 and ex["id"] in out.output and f.id in out.output

    # An export is not a fine-tuning job: OpenAI's list and routes never show it.
    assert {j.id for j in c.fine_tuning.jobs.list().data} == {job.id}
    assert server.http.get(f"/v1/fine_tuning/jobs/{ex['id']}").status_code == 404
    listed = server.http.get(EX, params={"limit": 1}).json()
    assert [e["id"] for e in listed["data"]] == [ex["id"]] and listed["has_more"] is True


def test_refusals_are_the_other_routes(tiny_server_factory: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    # A second base model whose config says Qwen2 (its other files the tiny Llama's): the GGUF writer's refusal.
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    for f in tiny_model_dir.iterdir():
        (qwen / f.name).symlink_to(f)
    (qwen / "config.json").unlink()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (qwen / "config.json").write_text(
        json.dumps({**config, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    )
    srv = tiny_server_factory(max_concurrent_runs=0, base_models={TINY: str(tiny_model_dir), "qwen": str(qwen)})
    model = stored_model(srv)  # nothing launches on this server: an export stays queued
    theirs = stored_model(srv, project="proj_other")

    def refused(body: dict[str, Any], status: int, code: str | None, param: str | None) -> dict[str, Any]:
        r = srv.http.post(EX, json=body)
        assert r.status_code == status, r.text
        validate(r.json(), "ErrorResponse")
        error = r.json()["error"]
        assert (error["code"], error["param"]) == (code, param), error
        return dict(error)

    # An unknown model and another project's are the same 404 as GET /v1/models/{model}.
    for name in ("ft:nope", theirs):
        error = refused({"model": name}, 404, "model_not_found", "model")
        assert error == srv.http.get(f"/v1/models/{name}").json()["error"]
    # A base model has nothing to merge.
    refused({"model": TINY}, 400, "invalid_model", "model")
    # The options: known values only; gguf_type with gguf only; every field is Tunery's.
    refused({"model": model, "format": "onnx"}, 400, None, "format")
    refused({"model": model, "dtype": "int8"}, 400, None, "dtype")
    refused({"model": model, "format": "gguf", "gguf_type": "q4_k"}, 400, None, "gguf_type")
    refused({"model": model, "gguf_type": "f16"}, 400, "invalid_value", "gguf_type")
    refused({"model": model, "merge": True}, 400, None, "merge")
    refused({}, 400, None, "model")
    # A GGUF of a model that is no Llama: refused now (the server reads its base's config), naming the format.
    error = refused(
        {"model": stored_model(srv, base="qwen"), "format": "gguf"}, 400, "unsupported_architecture", "format"
    )
    assert "LlamaForCausalLM only" in error["message"] and "Qwen2ForCausalLM" in error["message"]

    out = CLI.invoke(app, ["exports", "create", TINY, *cli_args(srv)])
    assert out.exit_code == 1 and "is a base model" in out.output

    # Cancel: as a job's, once, then refused.
    ex = srv.http.post(EX, json={"model": model, "format": "gguf", "gguf_type": "q8_0", "dtype": "bfloat16"}).json()
    assert (ex["format"], ex["gguf_type"], ex["dtype"]) == ("gguf", "q8_0", "bfloat16")
    assert wait_export(srv, ex["id"], {"queued"}, timeout=30)["error"] is None
    out = CLI.invoke(app, ["exports", "cancel", ex["id"], *cli_args(srv)])
    assert out.exit_code == 0 and out.output.strip() == "cancelled"
    again = srv.http.post(f"{EX}/{ex['id']}/cancel")
    assert again.status_code == 400 and again.json()["error"]["code"] == "export_not_cancellable"
    assert again.json()["error"]["param"] == "export_id"
    gone = srv.http.get(f"{EX}/exportjob-nope")
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "export_id"
    assert ex["id"] not in {j.id for j in srv.client.fine_tuning.jobs.list().data}


@pytest.mark.integration
def test_a_failed_trainer_fails_the_export_with_its_error(server: RunningServer) -> None:
    model = stored_model(server)  # a model row whose files are not in the object store
    ex = server.http.post(EX, json={"model": model}).json()
    done = wait_export(server, ex["id"], DONE, timeout=120)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "model_not_available" and done["error"]["param"] == "model"
    assert "no complete files" in done["error"]["message"]
    assert done["result_file"] is None
    assert server.http.get(f"/v1/fine_tuning/jobs/{ex['id']}/events").status_code == 404  # not a fine-tuning job
