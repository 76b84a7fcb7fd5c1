"""Take the model home: ``GET /v1/tunery/models/{model}/archive`` streams a fine-tuned or checkpoint model as a
``.tar.gz`` of the folder the trainer wrote (stored here by the trainer's own code, trainer/checkpoint.py), which
PEFT and transformers load as they are; same access as chatting with it (tunery/sharing.py). On both
configurations."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.configurations import (  # noqa: F401 (each server test runs embedded and on PostgreSQL + S3)
    configuration,
    configuration_metadata_store,
    configuration_object_store,
)
from tests.conftest import TINY, RunningServer
from tests.serving_fixtures import ALL_LINEAR
from trainer.checkpoint import MANIFEST, upload_checkpoint
from tunery.archive import safe_name, verify_archive
from tunery.db import FineTunedModel
from tunery.db.ops import now

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"
MODEL = "ft:tiny-llama:personal:home:AbCd1234"
CHECKPOINT = MODEL + ":ckpt-step-2"
MODEL_FULL = "ft:tiny-llama:personal:full:Full1234"
PREFIXES = {MODEL: "jobs/ftjob-home/model", CHECKPOINT: "jobs/ftjob-home/checkpoints/step-2"}
EVAL_REPORT = {"object": "fine_tuning.eval_report", "metrics": {"valid_loss": 1.25}}


@dataclass
class Trained:
    peft_model: Any  # the adapter as the trainer held it
    tokenizer: Any


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path) -> Trained:
    """A LoRA adapter of the tiny model with random nonzero A and B (distinct from any default initialisation)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEAR, init_lora_weights=False)
    return Trained(get_peft_model(model, config), AutoTokenizer.from_pretrained(str(tiny_model_dir)))


@dataclass
class World:
    srv: RunningServer
    projects: dict[str, str]
    keys: dict[str, str]

    def get(self, who: str, model: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.keys[who]}"}
        return self.srv.http.get(f"/v1/tunery/models/{model}/archive", headers=headers)


def add_model(srv: RunningServer, model: str, prefix: str, project_id: str) -> None:
    ctx = srv.app.state.ctx
    with ctx.db.session() as s:
        s.add(
            FineTunedModel(
                id=model,
                kind="checkpoint" if "ckpt" in model else "fine_tuned",
                base_model=TINY,
                job_id="ftjob-home",
                object_prefix=prefix,
                owned_by="personal",
                organization_id=ctx.settings.organization_id,
                project_id=project_id,
                created_at=now(),
            )
        )


@pytest.fixture
def world(tiny_server_factory: Callable[..., RunningServer], trained: Trained) -> World:
    """Projects A and B (an owner and a reader each); A's final model and checkpoint stored by the trainer's code,
    the checkpoint with an eval report written after its manifest."""
    srv = tiny_server_factory(api_keys=BOOTSTRAP, max_concurrent_runs=0)
    admin = {"authorization": f"Bearer {BOOTSTRAP}"}
    projects, keys = {}, {"admin": BOOTSTRAP}
    for name in ("A", "B"):
        projects[name] = srv.http.post("/v1/organization/projects", json={"name": name}, headers=admin).json()["id"]
        for role in ("owner", "reader"):
            made = srv.http.post(
                f"/v1/organization/projects/{projects[name]}/service_accounts",
                json={"name": f"{name}-{role}", "role": role},
                headers=admin,
            )
            keys[f"{name}-{role}"] = made.json()["api_key"]["value"]
    store = srv.app.state.ctx.store
    for model, prefix in PREFIXES.items():
        # The checkpoint with its eval report, as the trainer writes it (before the manifest, which lists its hash).
        extra = {"eval_report.json": json.dumps(EVAL_REPORT).encode()} if model == CHECKPOINT else None
        upload_checkpoint(
            store, prefix, trained.peft_model, trained.tokenizer, {"job_id": "ftjob-home"}, TINY, extra_files=extra
        )
        add_model(srv, model, prefix, projects["A"])
    return World(srv, projects, keys)


def extract(r: httpx.Response, model: str, into: Path) -> Path:
    """The archive's one top folder, named after the model, unpacked."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"].startswith(f'attachment; filename="{safe_name(model)}.tar.gz"')
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        assert {m.name.split("/")[0] for m in tar.getmembers()} == {safe_name(model)}
        tar.extractall(into, filter="data")
    return into / safe_name(model)


def check_manifest(folder: Path) -> dict[str, Any]:
    """Every file but the manifest is listed by the manifest (the eval report too), with its SHA-256."""
    manifest = json.loads((folder / MANIFEST).read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk - {MANIFEST} == set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    return dict(manifest)


def test_the_archive_is_the_adapter_peft_loads(world: World, trained: Trained, tiny_model_dir: Path, tmp_path: Path):
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = extract(world.get("A-owner", CHECKPOINT), CHECKPOINT, tmp_path)
    assert safe_name(CHECKPOINT) == "ft_tiny-llama_personal_home_AbCd1234_ckpt-step-2"
    manifest = check_manifest(folder)
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(manifest["files"])
    assert json.loads((folder / "eval_report.json").read_text()) == EVAL_REPORT
    # PEFT loads it on the base model, and its weights are the trained ones, tensor for tensor.
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(base, str(folder))
    want = get_peft_model_state_dict(trained.peft_model)
    got = get_peft_model_state_dict(loaded)
    assert want.keys() == got.keys() and len(want) > 0
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), name
    assert not all(torch.count_nonzero(t) == 0 for t in got.values())
    # The tokenizer and its chat template come with it.
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.chat_template and tokenizer.chat_template == trained.tokenizer.chat_template
    assert tokenizer("Hi there")["input_ids"] == trained.tokenizer("Hi there")["input_ids"]
    # The same checkpoint gives the same bytes (file times are the model's, gzip's header has none).
    first = world.get("A-owner", CHECKPOINT).content
    assert first == world.get("A-owner", CHECKPOINT).content
    # The final model has no eval report: the archive holds what is there.
    final = extract(world.get("A-reader", MODEL), MODEL, tmp_path / "final")  # a reader may download
    assert not (final / "eval_report.json").exists()
    check_manifest(final)


def test_who_may_download(world: World) -> None:
    for who in ("B-owner", "B-reader"):
        r = world.get(who, CHECKPOINT)
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"], error["type"]) == ("model_not_found", "model", "invalid_request_error")
    assert world.get("A-owner", "ft:tiny-llama:personal:nope:Zz").json()["error"]["code"] == "model_not_found"
    # A base model is not a fine-tuned one.
    r = world.get("A-owner", TINY)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "base model" in r.json()["error"]["message"]
    # Once shared with B, B's reader may download it (the checkpoint shared, not the final model).
    owner = {"authorization": f"Bearer {world.keys['A-owner']}"}
    shared = world.srv.http.post(
        f"/v1/fine_tuning/checkpoints/{CHECKPOINT}/permissions",
        json={"project_ids": [world.projects["B"]]},
        headers=owner,
    )
    assert shared.status_code == 200, shared.text
    assert world.get("B-reader", CHECKPOINT).status_code == 200
    assert world.get("B-reader", MODEL).status_code == 404
    # Each download is in the audit log, with who took it.
    log = world.srv.http.get(
        "/v1/organization/audit_logs",
        params={"event_types[]": "model.downloaded"},
        headers={"authorization": f"Bearer {BOOTSTRAP}"},
    ).json()["data"]
    assert [(e["project"]["id"], e["model.downloaded"]["id"]) for e in log] == [(world.projects["B"], CHECKPOINT)]


def test_an_incomplete_or_damaged_model_is_refused_before_any_byte(world: World) -> None:
    store = world.srv.app.state.ctx.store
    add_model(world.srv, MODEL + ":ckpt-step-1", "jobs/ftjob-home/checkpoints/step-1", world.projects["A"])
    store.put_bytes("jobs/ftjob-home/checkpoints/step-1/adapter_config.json", b"{}")  # no manifest (yet)
    r = world.get("A-owner", MODEL + ":ckpt-step-1")
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_incomplete"
    store.delete(f"{PREFIXES[MODEL]}/adapter_model.safetensors")  # listed by the manifest, gone from the store
    r = world.get("A-owner", MODEL)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_files_missing"
    assert "adapter_model.safetensors" in r.json()["error"]["message"]


def test_a_file_changed_after_its_manifest_breaks_the_stream(world: World) -> None:
    store = world.srv.app.state.ctx.store
    key = f"{PREFIXES[MODEL]}/tokenizer_config.json"
    data = store.get_bytes(key)
    store.put_bytes(key, data.replace(b"{", b"[", 1))  # same size, other bytes
    with pytest.raises(httpx.HTTPError):  # the stream ends early: never a whole archive with a wrong file
        r = world.get("A-owner", MODEL)
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            tar.getmembers()


def test_a_full_fine_tune_is_archived_the_same_way(
    tiny_server_factory: Callable[..., RunningServer], trained: Trained, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    srv = tiny_server_factory(max_concurrent_runs=0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prefix = "jobs/ftjob-full/model"
    upload_checkpoint(srv.app.state.ctx.store, prefix, model, trained.tokenizer, {}, TINY, full=True)
    add_model(srv, MODEL_FULL, prefix, srv.settings.project_id)
    folder = extract(srv.http.get(f"/v1/tunery/models/{MODEL_FULL}/archive"), MODEL_FULL, tmp_path)
    assert "config.json" in check_manifest(folder)["files"]
    loaded = AutoModelForCausalLM.from_pretrained(str(folder))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_tunery_models_download(world: World, tmp_path: Path) -> None:
    """The CLI saves the archive REST serves, and says why when it cannot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TUNERY_"))}
    env |= {"OPENAI_BASE_URL": f"{world.srv.base_url}/v1", "OPENAI_API_KEY": world.keys["A-reader"]}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this checkout's `tunery`, from any folder
    out = tmp_path / "home.tar.gz"
    cmd = [sys.executable, "-m", "api.cli", "models", "download", CHECKPOINT, "-o", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == world.get("A-reader", CHECKPOINT).content
    assert str(out) in done.stdout
    # Without -o: <safe name>.tar.gz in the current folder.
    done = subprocess.run(cmd[:-2], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / f"{safe_name(CHECKPOINT)}.tar.gz").read_bytes() == out.read_bytes()
    env["OPENAI_API_KEY"] = world.keys["B-reader"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "does not exist or you do not have access to it" in done.stderr
    assert out.read_bytes() == world.get("A-reader", CHECKPOINT).content  # the earlier file is left as it was


def test_verify_archive_finds_a_file_that_is_not_its_manifests(tmp_path: Path) -> None:
    """What `tunery models download` checks before it keeps a file: every file the manifest lists, with its hash."""

    def archive(files: dict[str, bytes], manifest_files: dict[str, str], top: str = "top/") -> str:
        path = tmp_path / "a.tar.gz"
        members = {**files, MANIFEST: json.dumps({"files": manifest_files}).encode()}
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name if "/" in name else f"{top}{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return str(path)

    good = hashlib.sha256(b"weights").hexdigest()
    assert verify_archive(archive({"w.safetensors": b"weights"}, {"w.safetensors": good})) == []
    assert verify_archive(archive({"w.safetensors": b"weighty"}, {"w.safetensors": good})) == [
        "w.safetensors: SHA-256 differs from the manifest's"
    ]
    assert verify_archive(archive({}, {"w.safetensors": good})) == ["w.safetensors: missing"]
    # The files of one model in one folder, as `tunery models download` writes them; `export` unpacks that folder.
    assert verify_archive(archive({"w.safetensors": b"weights"}, {"w.safetensors": good}, top="")) == [
        "the files are not in one top folder (found: .)"
    ]
    two = archive({"w.safetensors": b"weights", "other/x.txt": b"x"}, {"w.safetensors": good})
    assert verify_archive(two) == ["the files are not in one top folder (found: other, top)"]
    whole = Path(archive({"w.safetensors": b"weights"}, {"w.safetensors": good})).read_bytes()
    for cut in (whole[: len(whole) // 2], whole[:-4]):  # cut mid-file, or only gzip's trailer missing
        (tmp_path / "cut.tar.gz").write_bytes(cut)
        with pytest.raises((EOFError, tarfile.TarError)):
            verify_archive(str(tmp_path / "cut.tar.gz"))


def test_tunery_models_export_merges_the_downloaded_adapter_into_its_base(
    world: World, trained: Trained, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`tunery models export` turns a downloaded archive into a standalone model (and a GGUF): the base the adapter
    names is found among this machine's base models, and the merged model computes what base + adapter computes."""
    import torch
    from transformers import AutoModelForCausalLM

    archive = tmp_path / "home.tar.gz"
    archive.write_bytes(world.get("A-owner", CHECKPOINT).content)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TUNERY_"))}
    env |= {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TUNERY_DEMO_MODEL": "false"}
    env["TUNERY_BASE_MODELS"] = json.dumps({TINY: str(tiny_model_dir)})  # the base the adapter names, by name
    out, gguf = tmp_path / "merged", tmp_path / "merged.gguf"
    cmd = [sys.executable, "-m", "api.cli", "models", "export", str(archive), "--out", str(out)]
    done = subprocess.run([*cmd, "--gguf", str(gguf), "--gguf-type", "f32"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out), str(gguf)]
    assert not (out / "adapter_config.json").exists()
    ids = torch.tensor([trained.tokenizer("Hi there, how are you?")["input_ids"]])
    with torch.no_grad():
        want = trained.peft_model(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out))(ids).logits
        from_gguf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf.name)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(ids).logits
    assert torch.allclose(merged, want, atol=1e-5) and torch.allclose(from_gguf, want, atol=1e-4)
    assert not torch.allclose(base, want, atol=1e-3)  # the adapter changed the model: the merge kept it

    # Refusals say why: an unknown base, a damaged archive, an --out that is not a model folder.
    env["TUNERY_BASE_MODELS"] = "{}"
    done = subprocess.run([*cmd[:-1], str(tmp_path / "again")], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "is not on this machine: give its folder with --base" in done.stderr
    done = subprocess.run(
        [*cmd[:-1], str(tmp_path / "again"), "--base", str(tiny_model_dir)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr  # --base names the folder instead
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(archive.read_bytes()[:-100])
    done = subprocess.run(
        [*cmd[:5], str(damaged), "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "tunery models export:" in done.stderr and not (tmp_path / "x").exists()
    done = subprocess.run([*cmd[:-1], str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "is not a model folder" in done.stderr
    assert archive.exists()  # --out of a folder with other files: left alone
