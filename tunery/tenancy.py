"""Organizations, projects, service accounts and API keys in the metadata store (docs/tenancy.md).

An API key is made here and shown once: the store keeps only the SHA-256 of its value (looked up by it, through a
unique index, and compared again in constant time), with its organization, its project (None for an organization
admin key), its role and its expiry. A revoked key keeps its row, marked ``revoked_at``, so the store remembers that
keys were issued (:func:`keys_issued`): from the first one on, every request needs a key. The API
(api/services/organization.py) and ``tunery admin`` both go through these functions.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import exists, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from tunery import ids
from tunery.audit import Actor, EventType, record
from tunery.db import Database
from tunery.db.models import ADMIN_ROLE, PROJECT_ROLES, ApiKey, Organization, Project, ServiceAccount
from tunery.db.ops import now
from tunery.settings import Settings

# The first characters of a key's value tell its kind, as OpenAI's do.
PROJECT_KEY_PREFIX = "sk-svcacct-"
ADMIN_KEY_PREFIX = "sk-admin-"
DEFAULT_PROJECT_NAME = "Default project"
T = TypeVar("T")
log = logging.getLogger("tunery.tenancy")
# A key's ``last_used_at`` is written at most this often (seconds): no write on every request.
LAST_USED_RESOLUTION = 60


def key_digest(value: str) -> str:
    """What the store keeps of a key: the SHA-256 of its value (the value is 256 random bits: no salt needed)."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def redacted(value: str, prefix: str) -> str:
    """``sk-svcacct-...abcd``: the kind and the last four characters, as OpenAI's ``redacted_value``."""
    return f"{prefix}...{value[-4:]}"


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: its row, and its value, which is never stored and never shown again."""

    row: ApiKey
    value: str


def issue_key(
    s: Session,
    actor: Actor,
    *,
    organization_id: str,
    project_id: str | None,
    role: str,
    name: str,
    service_account_id: str | None = None,
    expires_at: int | None = None,
) -> IssuedKey:
    if (project_id is None) != (role == ADMIN_ROLE) or (project_id is not None and role not in PROJECT_ROLES):
        raise ValueError(f"role {role!r} does not fit a key of project {project_id!r}")
    prefix = ADMIN_KEY_PREFIX if project_id is None else PROJECT_KEY_PREFIX
    value = prefix + secrets.token_urlsafe(32)
    row = ApiKey(
        id=ids.api_key_id(),
        organization_id=organization_id,
        project_id=project_id,
        service_account_id=service_account_id,
        name=name,
        role=role,
        key_hash=key_digest(value),
        redacted_value=redacted(value, prefix),
        created_at=now(),
        expires_at=expires_at,
    )
    s.add(row)
    details = {"data": {"name": name, "role": role, "service_account_id": service_account_id, "expires_at": expires_at}}
    record(
        s,
        EventType.API_KEY_CREATED,
        actor,
        organization_id=organization_id,
        project_id=project_id,
        resource_id=row.id,
        details=details,
    )
    return IssuedKey(row, value)


def find_key(s: Session, value: str, at: int | None = None) -> ApiKey | None:
    """The live key whose value this is: not revoked, not expired, of a project that is not archived; else None."""
    digest = key_digest(value)
    at = now() if at is None else at
    row = s.scalar(
        select(ApiKey)
        .outerjoin(Project, Project.id == ApiKey.project_id)
        .where(
            ApiKey.key_hash == digest,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > at),
            or_(ApiKey.project_id.is_(None), Project.archived_at.is_(None)),
        )
    )
    # The index found the row by its digest; comparing again in constant time keeps the check timing-safe whatever
    # the database's comparison does.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row


def note_use(db: Database, key_id: str, last_used_at: int | None, at: int | None = None) -> bool:
    """Set a key's ``last_used_at`` when the value its lookup read (``last_used_at``) is older than
    :data:`LAST_USED_RESOLUTION` or unset: one write a minute per key at most, however many requests use it, and
    none at all otherwise. Requests (or replicas) racing to write it are harmless: a conditional UPDATE, in a
    transaction of its own, that only the first matches. Bookkeeping never fails a request: an error is logged.
    Returns whether it wrote."""
    at = now() if at is None else at
    if last_used_at is not None and at - last_used_at < LAST_USED_RESOLUTION:
        return False
    stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= at - LAST_USED_RESOLUTION)
    try:
        with db.session() as s:
            s.execute(update(ApiKey).where(ApiKey.id == key_id, stale).values(last_used_at=at))
    except SQLAlchemyError:
        log.warning("could not note the use of API key %s", key_id, exc_info=True)
        return False
    return True


def keys_issued(s: Session) -> bool:
    """Whether any key was ever issued from the store (revoked and expired ones count)."""
    return bool(s.scalar(select(exists().where(ApiKey.pk.is_not(None)))))


class WouldBlock(Exception):
    """A decision asked for without I/O (``blocking=False``) needs the metadata store: ask again in a thread."""


class Rechecked(Generic[T]):
    """A value read from the metadata store by ``read`` and kept ``seconds``, so that requests do not each query it:
    the one rule of the API's admission for what it rechecks (whether keys were issued, a project's request limit).
    Once ``final(value)`` holds, it is kept for good. ``get(blocking=False)`` never does I/O: when a read is due it
    raises :class:`WouldBlock` for one caller a recheck, whom the event loop sends to a thread to read, and the
    callers in between take the last value (one query a recheck, not one per request under way)."""

    def __init__(
        self, read: Callable[[], T], seconds: float, what: str, final: Callable[[T], bool] = lambda _value: False
    ):
        self.read = read
        self.seconds = seconds
        self.what = what  # what a WouldBlock says is to be read
        self.final = final
        self._value: T | None = None
        self._known = False
        self._kept = False  # final: never read again
        self._read_at = float("-inf")
        self._asked_at = float("-inf")  # when a caller was last sent to read it (WouldBlock)
        self._lock = threading.Lock()

    def _fresh(self, at: float) -> bool:
        return self._known and (self._kept or at - self._read_at < self.seconds)

    def get(self, blocking: bool = True) -> T:
        at = time.monotonic()
        if self._fresh(at):
            return self._value  # type: ignore[return-value]  # known
        if not blocking:
            if self._known and at - self._asked_at < self.seconds:
                return self._value  # type: ignore[return-value]  # being read by another caller meanwhile
            self._asked_at = at
            raise WouldBlock(f"{self.what} is to be read from the metadata store")
        with self._lock:  # one read at a time: the callers queued behind it take its value
            if not self._fresh(time.monotonic()):
                self.set(self.read())
            return self._value  # type: ignore[return-value]  # just read

    def set(self, value: T) -> None:
        """``value`` as if just read (a change this process made itself)."""
        self._value, self._known, self._read_at = value, True, time.monotonic()
        self._kept = self.final(value)


class KeyRegistry:
    """Whether the store has issued keys, without a query per request: once it has, for good (revoked keys keep
    their rows); until then, asked again at most every ``recheck_seconds`` (a key made by ``tunery admin`` in
    another process is required within that, and the time one query takes)."""

    def __init__(self, db: Database, recheck_seconds: float = 1.0):
        self.db = db
        self.recheck_seconds = recheck_seconds
        self._issued = Rechecked(self._ask, recheck_seconds, "whether keys were issued", final=bool)

    def _ask(self) -> bool:
        with self.db.session() as s:
            return keys_issued(s)

    def issued(self, blocking: bool = True) -> bool:
        """Whether keys are required; ``blocking=False``: raise :class:`WouldBlock` rather than ask the store, once a
        recheck (:class:`Rechecked`)."""
        return self._issued.get(blocking)

    def note_issued(self) -> None:
        """A key was just issued by this process: required from now on."""
        self._issued.set(True)


def ensure_default_tenancy(s: Session, settings: Settings) -> Project:
    """The rows of the default organization and project (the embedded mode's tenant, and that of the
    TUNERY_API_KEYS), made when missing; returns the default project."""
    if s.scalar(select(Organization).where(Organization.id == settings.organization_id)) is None:
        s.add(Organization(id=settings.organization_id, name=settings.organization_slug, created_at=now()))
    project = s.scalar(select(Project).where(Project.id == settings.project_id))
    if project is None:
        project = Project(
            id=settings.project_id,
            organization_id=settings.organization_id,
            name=DEFAULT_PROJECT_NAME,
            created_at=now(),
        )
        s.add(project)
    return project


def ensure_default_rows(database: Database, settings: Settings) -> None:
    """:func:`ensure_default_tenancy` in a transaction of its own, at start-up; another replica starting at the same
    time may make the rows first, which is as good."""
    try:
        with database.session() as s:
            ensure_default_tenancy(s, settings)
    except IntegrityError:
        pass


def create_project(s: Session, actor: Actor, organization_id: str, name: str) -> Project:
    project = Project(id=ids.project_id(), organization_id=organization_id, name=name, created_at=now())
    s.add(project)
    record(
        s,
        EventType.PROJECT_CREATED,
        actor,
        organization_id=organization_id,
        project_id=project.id,
        resource_id=project.id,
        details={"data": {"name": name}},
    )
    return project


def create_service_account(
    s: Session, actor: Actor, project: Project, *, name: str, role: str, expires_at: int | None = None
) -> tuple[ServiceAccount, IssuedKey]:
    """A service account of ``project`` with ``role`` (owner, member or reader) and its one API key."""
    if role not in PROJECT_ROLES:
        raise ValueError(f"unknown project role {role!r}")
    account = ServiceAccount(
        id=ids.service_account_id(),
        organization_id=project.organization_id,
        project_id=project.id,
        name=name,
        role=role,
        created_at=now(),
    )
    s.add(account)
    record(
        s,
        EventType.SERVICE_ACCOUNT_CREATED,
        actor,
        organization_id=project.organization_id,
        project_id=project.id,
        resource_id=account.id,
        details={"data": {"name": name, "role": role}},
    )
    key = issue_key(
        s,
        actor,
        organization_id=project.organization_id,
        project_id=project.id,
        role=role,
        name=name,
        service_account_id=account.id,
        expires_at=expires_at,
    )
    return account, key


def revoke(s: Session, actor: Actor, key: ApiKey) -> None:
    """The key stops working at once: its next request is a 401."""
    key.revoked_at = now()
    record(
        s,
        EventType.API_KEY_DELETED,
        actor,
        organization_id=key.organization_id,
        project_id=key.project_id,
        resource_id=key.id,
        details={"data": {"name": key.name, "role": key.role, "service_account_id": key.service_account_id}},
    )


def live_keys(organization_id: str, project_id: str | None = None, *, admin: bool = False):  # type: ignore[no-untyped-def]
    """The query of an organization's keys that are not revoked: a project's, or (``admin``) the admin keys."""
    query = select(ApiKey).where(ApiKey.organization_id == organization_id, ApiKey.revoked_at.is_(None))
    if admin:
        return query.where(ApiKey.project_id.is_(None))
    if project_id is not None:
        return query.where(ApiKey.project_id == project_id)
    return query
