"""Brokered object access: a trainer with no store credentials reaches exactly its job's objects, through the
scheduler's ``TrainerObjects`` service (real gRPC) and presigned URLs of a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from scheduler.object_access import ObjectAccessService, Reach, job_reach
from scheduler.reporting import ReportingServer, ReportingService
from tests.scheduler.test_reporting import a_job
from trainer.brokered import BrokeredStore
from trainer.errors import RunStopped
from tunery import ids
from tunery.db import Database, File, FineTunedModel, Job
from tunery.db.ops import now
from tunery.storage import ObjectNotFound, ObjectStoreError
from tunery.storage_s3 import MIN_PART
from tunery.v1 import reporting_pb2 as pb
from tunery.v1 import reporting_pb2_grpc as pb_grpc

TOKEN_A, TOKEN_B = "token-of-a", "token-of-b"
PARENT = "ft:tiny:org::ftjob-parent"
Op = pb.AccessRequest.Op


def a_file(file_id: str, project: str = "proj") -> File:
    return File(id=file_id, organization_id="org", project_id=project, filename=f"{file_id}.jsonl", bytes=4,
                purpose="fine-tune", object_key=f"files/{file_id}", created_at=now(), status="processed")  # fmt: skip


def a_model(name: str, prefix: str, project: str = "proj") -> FineTunedModel:
    return FineTunedModel(id=name, kind="fine_tuned", base_model="tiny", job_id="ftjob-parent", object_prefix=prefix,
                          owned_by="org", organization_id="org", project_id=project, created_at=now())  # fmt: skip


@pytest.fixture
def broker(tmp_path: Path, seaweedfs: Any) -> Iterator[Any]:
    """Job A (project proj) trains on file-a with file-v for validation and continues from a fine-tuned model of
    its project; job B is another project's. A's store and the server."""
    db = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    db.upgrade()
    store = seaweedfs.store(part_size=MIN_PART)
    with db.session() as s:
        job_a = a_job("ftjob-a", token=TOKEN_A)
        job_a.training_file, job_a.validation_file, job_a.model = "file-a", "file-v", PARENT
        job_b = a_job("ftjob-b", token=TOKEN_B)
        job_b.project_id, job_b.training_file = "proj-b", "file-b"
        cancelled = a_job("ftjob-gone", token="token-of-gone")
        cancelled.cancel_requested = True
        s.add_all([job_a, job_b, cancelled, a_file("file-a"), a_file("file-v"), a_file("file-c"),
                   a_file("file-b", "proj-b"), a_model(PARENT, "jobs/ftjob-parent/model")])  # fmt: skip
        s.commit()
    for key in ("files/file-a", "files/file-v", "files/file-b", "files/file-c", "jobs/ftjob-b/spec.json",
                "jobs/ftjob-parent/model/adapter_model.safetensors", "jobs/ftjob-parent/spec.json"):  # fmt: skip
        store.put_bytes(key, key.encode())
    service = ObjectAccessService(db, store, url_seconds=60)
    server = ReportingServer(ReportingService(db, store), objects=service)
    server.start()
    channel = grpc.insecure_channel(server.address)
    trainer = BrokeredStore(server.address, "ftjob-a", TOKEN_A, part_size=MIN_PART, attempts=2, backoff_s=0.1)
    yield db, store, service, server, pb_grpc.TrainerObjectsStub(channel), trainer
    trainer.close()
    channel.close()
    server.stop(grace=0)
    db.engine.dispose()


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def ask(stub: Any, op: int, key: str, job: str = "ftjob-a", token: str = TOKEN_A, **fields: Any) -> Any:
    return stub.Access(pb.AccessRequest(run=pb.RunRef(job_id=job, run_token=token), op=op, key=key, **fields))


def test_the_rule_of_a_job_s_reach(broker: Any) -> None:
    db = broker[0]
    with db.session() as s:
        job = s.query(Job).filter(Job.id == "ftjob-a").one()
        reach = job_reach(s, job)
    assert reach == Reach("jobs/ftjob-a/", frozenset({"files/file-a", "files/file-v"}),
                          ("jobs/ftjob-a/", "jobs/ftjob-parent/model/"))  # fmt: skip
    for key in ("files/file-a", "files/file-v", "jobs/ftjob-a/spec.json", "jobs/ftjob-a/resume/step-2/state.json",
                "jobs/ftjob-parent/model/adapter_model.safetensors"):  # fmt: skip
        assert reach.may_read(key), key
    for key in ("files/file-b", "files/file-c", "files/file-a/x", "files/file-", "jobs/ftjob-b/spec.json",
                "jobs/ftjob-ab/spec.json", "jobs/ftjob-a/../ftjob-b/spec.json", "jobs/ftjob-a//x", "/jobs/ftjob-a/x",
                "jobs/ftjob-parent/spec.json", "jobs/ftjob-parent/modelx/a", ""):  # fmt: skip
        assert not reach.may_read(key), key
    assert reach.may_write("jobs/ftjob-a/checkpoints/step-3/adapter_model.safetensors")
    assert reach.may_write("jobs/ftjob-a/results.csv")
    for key in ("jobs/ftjob-a/spec.json", "jobs/ftjob-a/trainer.log", "files/file-a", "jobs/ftjob-parent/model/x",
                "jobs/ftjob-a/checkpoints/../../ftjob-b/x", "jobs/ftjob-a"):  # fmt: skip
        assert not reach.may_write(key), key
    assert reach.may_list("jobs/ftjob-a/") and reach.may_list("jobs/ftjob-parent/model/")
    assert not reach.may_list("jobs/ftjob-a") and not reach.may_list("jobs/") and not reach.may_list("files/")


def test_the_token_comes_first_and_gives_no_oracle(broker: Any) -> None:
    """A wrong token, a finished or cancelled job, an unknown job: PERMISSION_DENIED, whatever else the request says
    (an unknown operation, a key outside any reach)."""
    stub = broker[4]
    runs = (("ftjob-a", "guess"), ("ftjob-a", TOKEN_B), ("ftjob-nope", TOKEN_A), ("ftjob-gone", "token-of-gone"))
    for job, token in runs:
        for op, key in ((Op.OP_READ, "files/file-a"), (Op.OP_UNSPECIFIED, "../../etc"), (Op.OP_LIST, "")):
            request = pb.AccessRequest(run=pb.RunRef(job_id=job, run_token=token), op=op, key=key)
            assert _code(lambda r=request: stub.Access(r)) == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("op", "key"),
    [(Op.OP_READ, "files/file-b"), (Op.OP_READ, "files/file-c"), (Op.OP_READ, "jobs/ftjob-b/spec.json"),
     (Op.OP_STAT, "jobs/ftjob-parent/spec.json"), (Op.OP_LIST, "jobs/"), (Op.OP_LIST, "files/"),
     (Op.OP_WRITE, "jobs/ftjob-a/spec.json"), (Op.OP_WRITE, "files/file-a"), (Op.OP_DELETE, "files/file-a"),
     (Op.OP_START_UPLOAD, "jobs/ftjob-b/model/x"), (Op.OP_READ, "jobs/ftjob-a/../ftjob-b/spec.json"),
     (Op.OP_UNSPECIFIED, "jobs/ftjob-a/x")],
)  # fmt: skip
def test_job_a_cannot_reach_beyond_its_job(broker: Any, op: int, key: str) -> None:
    _, store, _, _, stub, trainer = broker
    assert _code(lambda: ask(stub, op, key)) == grpc.StatusCode.INVALID_ARGUMENT
    assert store.get_bytes("files/file-a") == b"files/file-a"  # nothing was deleted or written
    with pytest.raises(ObjectStoreError, match="outside this job's reach"):
        trainer.get_bytes("files/file-b")


def test_the_brokered_store_round_trip(broker: Any) -> None:
    _, store, _, _, _, trainer = broker
    assert trainer.url.startswith("tunery-broker://") and trainer.url.endswith("/ftjob-a")
    # Its inputs: data files and the model it continues from.
    assert trainer.get_bytes("files/file-a") == b"files/file-a"
    assert trainer.list("jobs/ftjob-parent/model/") == ["jobs/ftjob-parent/model/adapter_model.safetensors"]
    # One PUT, and a multipart upload (three parts of at least 5 MiB but the last), streamed.
    assert trainer.put_bytes("jobs/ftjob-a/results.csv", b"step\n1\n") == (7, hashlib.sha256(b"step\n1\n").hexdigest())
    big = bytes(range(256)) * (12 * 1024 * 1024 // 256 + 7)
    chunks = (big[i : i + 999_999] for i in range(0, len(big), 999_999))
    size, sha = trainer.put_stream("jobs/ftjob-a/model/big.bin", chunks)
    assert (size, sha) == (len(big), hashlib.sha256(big).hexdigest())
    assert store.get_bytes("jobs/ftjob-a/model/big.bin") == big  # what the control plane (and serving) reads
    assert trainer.get_bytes("jobs/ftjob-a/model/big.bin") == big
    assert trainer.size("jobs/ftjob-a/model/big.bin") == len(big) and trainer.exists("jobs/ftjob-a/results.csv")
    assert trainer.list("jobs/ftjob-a/") == ["jobs/ftjob-a/model/big.bin", "jobs/ftjob-a/results.csv"]
    assert store.incomplete("") == []
    trainer.delete("jobs/ftjob-a/model/big.bin")
    assert not trainer.exists("jobs/ftjob-a/model/big.bin")
    with pytest.raises(ObjectNotFound):
        trainer.get_bytes("jobs/ftjob-a/model/big.bin")
    with pytest.raises(ObjectNotFound):
        trainer.size("jobs/ftjob-a/nothing")

    # A write that fails mid-stream leaves nothing: its multipart upload is aborted.
    def failing() -> Iterator[bytes]:
        yield big[: 6 * 1024 * 1024]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        trainer.put_stream("jobs/ftjob-a/model/half.bin", failing())
    assert store.incomplete("") == [] and not store.exists("jobs/ftjob-a/model/half.bin")


def test_a_presigned_url_is_for_one_key_and_expires(broker: Any) -> None:
    _, store, service, _, stub, _ = broker
    url = ask(stub, Op.OP_WRITE, "jobs/ftjob-a/results.csv").url
    assert "X-Amz-Signature" in url and "tunery-test-secret" not in url
    forged = url.replace("jobs/ftjob-a/results.csv", "jobs/ftjob-b/results.csv")
    assert httpx.put(forged, content=b"forged").status_code == 403  # the signature names the key
    assert not store.exists("jobs/ftjob-b/results.csv")
    assert httpx.get(ask(stub, Op.OP_READ, "files/file-a").url).status_code == 200
    service.url_seconds = 1  # (a URL of 1 s is not checked for its 200 too: a busy machine may take that long)
    url = ask(stub, Op.OP_READ, "files/file-a").url
    time.sleep(2.5)
    assert httpx.get(url).status_code == 403  # expired


def test_a_stopped_run_loses_its_reach(broker: Any) -> None:
    """Once the job is cancelled (or its run finished, the token cleared), the trainer's next access stops it."""
    db, _, _, _, _, trainer = broker
    assert trainer.exists("files/file-a")
    with db.session() as s:
        job = s.query(Job).filter(Job.id == "ftjob-a").one()
        job.run_token = ids.token_digest("a newer run")
        s.commit()
    with pytest.raises(RunStopped):
        trainer.get_bytes("files/file-a")


def test_resume_states_go_through_the_broker(broker: Any, tmp_path: Path) -> None:
    """What a paused or preempted run writes and the run resuming from it reads: states (uploaded, found complete,
    pruned, downloaded) under the job's own prefix, with nothing but the brokered store."""
    from tunery.resume import complete_states, download_state, prune_states, state_prefix, upload_state

    trainer = broker[5]
    folder = tmp_path / "state"
    (folder / "sub").mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(b"\x01" * (6 * 1024 * 1024))  # a multipart upload
    (folder / "sub" / "rng.json").write_text("{}")
    for step in (2, 4):
        upload_state(trainer, state_prefix("jobs/ftjob-a", step), folder, {"step": step})
    assert [s.step for s in complete_states(trainer, "jobs/ftjob-a")] == [4, 2]
    assert prune_states(trainer, "jobs/ftjob-a", keep=1) == 1
    [state] = complete_states(trainer, "jobs/ftjob-a")
    download_state(trainer, state, tmp_path / "back")
    assert (tmp_path / "back" / "optimizer.pt").read_bytes() == (folder / "optimizer.pt").read_bytes()
    assert not [k for k in broker[1].list("jobs/ftjob-a/") if "/step-2/" in k]


def test_a_reinforcement_job_reaches_its_fine_tuned_judges_files(tmp_path: Path) -> None:
    """A score_model grader's ft: judge is loaded by the trainer from the store: its prefix is in the job's reach when
    its project may use it, and another project's model (which job creation refuses) never is."""
    from tunery.plan import ReinforcementPlan, TrainingPlan

    db = Database(f"sqlite:///{tmp_path / 'tunery.db'}")
    db.upgrade()
    judge = {"type": "score_model", "name": "j", "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    grader = {
        "type": "multi",
        "name": "m",
        "graders": {"mine": {**judge, "model": "ft:tiny:org:j:mine"}, "theirs": {**judge, "model": "ft:tiny:org:j:b"}},
        "calculate_output": "mine + theirs",
    }
    plan = TrainingPlan(
        method="grpo",
        n_epochs=1,
        batch_size=2,
        learning_rate=1e-4,
        reinforcement=ReinforcementPlan(
            grader=grader, num_generations=2, max_completion_length=4, kl_coef=0.0, temperature=1.0
        ),
    )
    with db.session() as s:
        job = a_job("ftjob-rl", token=TOKEN_A)
        job.training_file = "file-a"
        job.plan = plan.model_dump()
        s.add_all([job, a_model("ft:tiny:org:j:mine", "jobs/ftjob-j1/model"),
                   a_model("ft:tiny:org:j:b", "jobs/ftjob-j2/model", project="proj-b")])  # fmt: skip
        s.commit()
    with db.session() as s:
        reach = job_reach(s, s.query(Job).filter(Job.id == "ftjob-rl").one())
    assert reach.read_prefixes == ("jobs/ftjob-rl/", "jobs/ftjob-j1/model/")
    assert reach.may_read("jobs/ftjob-j1/model/adapter_model.safetensors")
    assert not reach.may_read("jobs/ftjob-j2/model/adapter_model.safetensors")
    db.engine.dispose()
