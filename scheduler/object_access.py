"""The gRPC ``TrainerObjects`` service: what a brokered trainer may reach in the object store, and the presigned URLs
that reach it.

A brokered trainer holds no object-store credentials (docs/security.md, "What a trainer can reach"). For each object
it reads or writes it asks here, with its run token; the token is checked first (:func:`scheduler.reporting.run_job`,
the one check of every trainer call), then the key against the job's reach, worked out from the metadata store, never
from anything the trainer could have written (its spec.json lies under its own, writable, prefix):

- **read**: everything under ``jobs/<job>/`` (its spec, its checkpoints and resume states), the objects of its input
  files (training, validation, mix, eval reference: the job's rows, of its own project), and everything under the
  prefix of the fine-tuned model it continues from and of its grader's fine-tuned judge models (models its project
  may use: its own, or shared with it);
- **write** (and delete, and multipart uploads): keys under ``jobs/<job>/``, but for the two the scheduler writes
  there (``spec.json``, ``trainer.log``);
- **list**: prefixes inside what it may read.

Reads and writes are short-lived presigned URLs (``TUNERY_TRAINER_URL_SECONDS``) of that one key, so the trainer's
bytes go to the store directly; listing, sizes, deletes and the start and end of a multipart upload are done here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.orm import Session

from scheduler.preprocess import job_files, judge_names, parent_model_prefix
from scheduler.reporting import run_job
from tunery import layout
from tunery.db import Database, Job
from tunery.jobstate import TERMINAL
from tunery.metrics import Metrics
from tunery.sharing import usable_named
from tunery.storage import ObjectNotFound, ObjectStore, _check_key
from tunery.storage_s3 import S3ObjectStore
from tunery.v1 import reporting_pb2 as pb
from tunery.v1 import reporting_pb2_grpc as pb_grpc

log = logging.getLogger("tunery.object_access")

Op = pb.AccessRequest.Op


def _valid(key: str) -> bool:
    try:
        _check_key(key)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Reach:
    """What one job's run may read and write: the rule of brokered access."""

    job_prefix: str  # jobs/<job>/
    read_keys: frozenset[str]  # the objects of its input files
    read_prefixes: tuple[str, ...]  # its own prefix; the fine-tuned model it continues from; its ft: judges

    def may_read(self, key: str) -> bool:
        return _valid(key) and (key in self.read_keys or any(key.startswith(p) for p in self.read_prefixes))

    def may_list(self, prefix: str) -> bool:
        return _valid(prefix.rstrip("/")) and any(prefix.startswith(p) for p in self.read_prefixes)

    def may_write(self, key: str) -> bool:
        output = self.job_prefix.rstrip("/")
        scheduler_owned = {layout.spec_key(output), layout.log_key(output)}
        return _valid(key) and key.startswith(self.job_prefix) and key not in scheduler_owned


def job_reach(s: Session, job: Job) -> Reach:
    own = layout.job_prefix(job.id) + "/"
    files = [
        f
        for f in job_files(s, job).values()
        if f.organization_id == job.organization_id and f.project_id == job.project_id
    ]
    prefixes = [own]
    parent = parent_model_prefix(s, job)
    if parent:
        prefixes.append(parent.strip("/") + "/")
    for name in judge_names(job):  # a fine-tuned judge's files (a model its project may use)
        judge = usable_named(s, job.organization_id, job.project_id, name)
        if judge is not None:
            prefixes.append(judge.object_prefix.strip("/") + "/")
    return Reach(own, frozenset(f.object_key for f in files), tuple(prefixes))


class ObjectAccessService(pb_grpc.TrainerObjectsServicer):
    def __init__(self, db: Database, store: ObjectStore, url_seconds: int = 900, metrics: Metrics | None = None):
        self.db = db
        self.store = store
        self.url_seconds = url_seconds
        self.metrics = metrics or Metrics()

    def _reach(self, run: pb.RunRef) -> Reach | None:
        """The reach of the run's job; None when the token is not its current run's, or the job is over or being
        cancelled (the same answer for each, as for reports)."""

        def look(s: Session) -> Reach | None:
            job = run_job(s, run)
            if job is None or job.status in TERMINAL or job.cancel_requested:
                return None
            return job_reach(s, job)

        with self.db.session() as s:
            return look(s)

    def Access(self, request: pb.AccessRequest, context: grpc.ServicerContext) -> pb.AccessReply:
        self.metrics.trainer_reports.labels("objects").inc()
        reach = self._reach(request.run)
        if reach is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "unknown job or stale run token")
        assert reach is not None
        key, op = request.key, request.op
        allowed: Callable[[str], bool] = reach.may_write
        if op == Op.OP_LIST:
            allowed = reach.may_list
        elif op in (Op.OP_READ, Op.OP_STAT):
            allowed = reach.may_read
        if op == Op.OP_UNSPECIFIED or not allowed(key):
            log.warning("refused %s of %r to a run of %s", Op.Name(op), key, request.run.job_id)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{key!r} is outside this job's reach")
        store = self.store
        if not isinstance(store, S3ObjectStore):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "brokered object access needs an s3:// object store")
        assert isinstance(store, S3ObjectStore)
        try:
            return self._do(store, request)
        except ObjectNotFound:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no object {key!r}")
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (ClientError, BotoCoreError) as e:
            log.warning("object access %s of %r failed: %s", Op.Name(op), key, e)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the object store refused: {e}")
        raise AssertionError("unreachable")  # context.abort raises

    def _do(self, store: S3ObjectStore, request: pb.AccessRequest) -> pb.AccessReply:
        key, op, seconds = request.key, request.op, self.url_seconds
        if op == Op.OP_READ:
            return pb.AccessReply(url=store.presigned_url(key, seconds))
        if op == Op.OP_WRITE:
            return pb.AccessReply(url=store.presigned_put_url(key, seconds))
        if op == Op.OP_STAT:
            try:
                return pb.AccessReply(exists=True, size=store.size(key))
            except ObjectNotFound:
                return pb.AccessReply(exists=False)
        if op == Op.OP_LIST:
            return pb.AccessReply(keys=store.list(key))
        if op == Op.OP_DELETE:
            store.delete(key)
            return pb.AccessReply()
        if op == Op.OP_START_UPLOAD:
            return pb.AccessReply(upload_id=store.start_upload(key))
        if op == Op.OP_WRITE_PART:
            return pb.AccessReply(url=store.presigned_part_url(key, request.upload_id, request.part_number, seconds))
        if op == Op.OP_COMPLETE_UPLOAD:
            store.complete_upload(key, request.upload_id, [(p.part_number, p.etag) for p in request.parts])
            return pb.AccessReply()
        if op == Op.OP_ABORT_UPLOAD:
            store.abort_upload(key, request.upload_id)
            return pb.AccessReply()
        raise ValueError(f"unknown operation {op}")
