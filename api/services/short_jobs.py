"""Short jobs: a run of the trainer that is not a fine-tune (an evaluation, an export), a resource of its own.

Each is a job (tunery.jobstate.JobKind) in the jobs table, so the state machine, the fair queue, project quotas and
claims, the trainer's launch on either backend, its run token and reporting channel, cancellation and crash handling
are the jobs'. At the API each is its own resource (``/v1/tunery/evaluations``, ``/v1/tunery/exports``); the
fine-tuning routes select ``kind = fine_tune`` (:func:`api.services.jobs.owned`), so OpenAI SDK users never see one
among their fine-tuning jobs.

:class:`ShortJobService` is the one home of what every such resource does alike: find the caller's one by id (else
its 404), list them newest first, retrieve, cancel (the state machine's cancel, as a job's) and audit. A kind adds
its own ``create`` (its checks, its options) and states its words: the kind, the noun, the id's parameter, its audit
events and how a row becomes its API object. A next short kind adds a kind, a trainer task, a spec builder
(scheduler/specs.py) and a subclass of this.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import AppContext, Tenant
from api.errors import InvalidRequest, NotFound
from api.pagination import page
from api.protocol.base import CursorPage, PageRequest
from api.services.jobs import NOT_SHOWN, owned
from tunery import jobstate
from tunery.audit import Actor, EventType, record
from tunery.db import Job
from tunery.db.ops import add_event, now
from tunery.jobstate import JobKind, JobStatus
from tunery.plan import TrainingPlan

O = TypeVar("O")  # noqa: E741 - the resource's API object
L = TypeVar("L", bound=CursorPage[Any])  # a page of them


def not_found(noun: str, param: str, job_id: str) -> NotFound:
    return NotFound(f"No such {noun}: {job_id}", param=param)


class ShortJobService(ABC, Generic[O, L]):
    """The caller's short jobs of one kind. Blocking (database): run it off the event loop."""

    kind: ClassVar[JobKind]
    noun: ClassVar[str]  # "evaluation": in messages, codes (``evaluation_not_cancellable``) and the id's param
    created: ClassVar[EventType]
    cancelled: ClassVar[EventType]
    list_type: type[L]

    def __init__(self, ctx: AppContext, tenant: Tenant, actor: Actor):
        self.ctx = ctx
        self.tenant = tenant
        self.actor = actor

    @staticmethod
    @abstractmethod
    def to_object(j: Job) -> O:
        """The row as its API object."""

    @property
    def param(self) -> str:
        return f"{self.noun}_id"

    def _find(self, s: Session, job_id: str) -> Job:
        job = s.scalar(select(Job).where(Job.id == job_id, *owned(self.tenant, self.kind)).options(*NOT_SHOWN))
        if job is None:
            raise not_found(self.noun, self.param, job_id)
        return job

    def _record(self, s: Session, type: EventType, job: Job, details: dict[str, Any] | None = None) -> None:
        record(
            s,
            type,
            self.actor,
            organization_id=job.organization_id,
            project_id=job.project_id,
            resource_id=job.id,
            details=details,
        )

    def _new(
        self,
        s: Session,
        *,
        job_id: str,
        model: str,
        base_model: str,
        parent: Job | None,
        options: dict[str, Any],
        plan: TrainingPlan | None = None,
        file: str = "",
        seed: int | None = None,
        events: Sequence[str],
        details: dict[str, Any],
    ) -> O:
        """Add the new job (its parent's method, hyperparameters and plan: the model it reads was trained so; or
        ``plan``, the parent's as the new job changes it), its events and its audit record; the scheduler is woken
        once the caller's transaction commits."""
        if plan is None and parent is not None:
            plan = parent.training_plan()
        job = Job(
            id=job_id,
            kind=self.kind,
            organization_id=self.tenant.organization_id,
            project_id=self.tenant.project_id,
            created_at=now(),
            model=model,
            base_model=base_model,
            training_file=file,
            validation_file=None,
            suffix=None,
            seed=seed if seed is not None else parent.seed if parent is not None else secrets.randbelow(2**31),
            job_metadata=None,
            method=parent.method if parent is not None else {"type": "supervised"},
            hyperparameters=parent.hyperparameters if parent is not None else {},
            integrations=[],
            extensions={"tunery": options},
            result_files=[],
            attempts=0,
            priority=0,
            plan=plan.model_dump() if plan is not None else None,
        )
        jobstate.create(job)
        s.add(job)
        s.flush()
        for message in events:
            add_event(s, job.id, message)
        self._record(s, self.created, job, {"data": {"kind": self.kind.value, **details}})
        return self.to_object(job)

    def list(self, req: PageRequest) -> L:
        """The tenant's jobs of this kind, newest first."""
        with self.ctx.db.session() as s:
            q = select(Job).where(*owned(self.tenant, self.kind)).options(*NOT_SHOWN)
            rows, more = page(s, Job, q, after=req.after, limit=req.limit)
            return self.list_type.of([self.to_object(j) for j in rows], more)

    def retrieve(self, job_id: str) -> O:
        with self.ctx.db.session() as s:
            return self.to_object(self._find(s, job_id))

    def cancel(self, job_id: str) -> O:
        """Cancel one that has not finished (the state machine's cancel, as a job's): at once if it waits; a run is
        stopped by the scheduler."""

        def apply(s: Session) -> O:
            job = self._find(s, job_id)
            try:
                jobstate.cancel(job, now())
            except jobstate.IllegalTransition:
                done = "been cancelled" if job.status == JobStatus.cancelled else job.status
                raise InvalidRequest(
                    f"{self.noun.capitalize()} {job_id} has already {done}.",
                    param=self.param,
                    code=f"{self.noun}_not_cancellable",
                ) from None
            add_event(s, job.id, f"{self.noun.capitalize()} cancelled")
            self._record(s, self.cancelled, job)
            return self.to_object(job)

        out = self.ctx.db.transaction(apply)
        self.ctx.wake_scheduler()
        return out
