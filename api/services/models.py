"""Models: the base models of this server, and the caller's fine-tuned and checkpoint models; what a model name
resolves to (for chat): a base model, a fine-tuned or checkpoint model, or one of the project's aliases
(api/services/aliases.py); deleting a fine-tuned model (and unloading it from the serving engine)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from anyio import to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import BOUND_TENANT, AppContext, Tenant
from api.encoded import Encoding
from api.errors import InvalidRequest, NotFound, PermissionDenied, Unavailable
from api.pagination import AnyRow
from api.protocol.models import Model, ModelDeleted, ModelList
from serving.protocol import ModelRef
from tunery.aliases import find_alias
from tunery.archive import CheckpointDamaged, CheckpointIncomplete, archive_stream, checkpoint_entries, safe_name
from tunery.audit import Actor, EventType, record
from tunery.db import FineTunedModel, ModelAlias
from tunery.sharing import ResolvedModel, delete_permissions, resolve_usable, usable_by, usable_model

BASE_OWNER = "tunery"


def model_ref(model: ResolvedModel) -> ModelRef:
    """What the serving backend runs for a resolved model."""
    return ModelRef(
        base_name=model.base_name,
        base_path=model.base_path,
        adapter_name=model.id if model.adapter_prefix else None,
        adapter_prefix=model.adapter_prefix,
    )


def _created(path: str) -> int:
    try:
        return int(os.stat(path).st_mtime)
    except OSError:
        return 0


# The list clients poll, built once and run without the ORM (Database.read), its tenant bound to Tenant.params.
_USABLE = (
    select(FineTunedModel.id, FineTunedModel.created_at, FineTunedModel.owned_by)
    .where(usable_by(BOUND_TENANT.organization_id, BOUND_TENANT.project_id))
    .order_by(FineTunedModel.pk.desc())
)


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not exist or you do not have access to it.", param="model", code="model_not_found"
    )


def model_to_read(s: Session, t: Tenant, model: str, base_models: dict[str, str], base_refused: str) -> FineTunedModel:
    """The ``ft:`` model or checkpoint model ``model`` that a short job of the tenant (an evaluation, an export)
    reads: one the project may use (its own, or shared with it; otherwise the 404 of ``GET /v1/models/{model}``),
    whose base model this server has. A base model is refused with ``base_refused``'s reason (400
    ``invalid_model``)."""
    if model in base_models:
        raise InvalidRequest(f"Model {model!r} is a base model: {base_refused}", param="model", code="invalid_model")
    row = usable_model(s, t.organization_id, t.project_id, model)
    if row is None:
        raise model_not_found(model)
    if row.base_model not in base_models:
        raise InvalidRequest(
            f"The base model of {model!r} ({row.base_model}) is not available on this server.",
            param="model",
            code="model_not_available",
        )
    return row


def ft_model_object(m: FineTunedModel | AnyRow) -> Model:
    return Model(id=m.id, created=m.created_at, owned_by=m.owned_by)


def project_alias(s: Session, t: Tenant, name: str) -> ModelAlias | None:
    """The tenant's alias called ``name``; another project's is never found."""
    return find_alias(s, t.organization_id, t.project_id, name)


def resolve_model(s: Session, ctx: AppContext, t: Tenant, model: str) -> ResolvedModel:
    """A base model of this server, or a fine-tuned model the tenant may use (its own or shared with it:
    tunery/sharing.py) whose base model it serves, named directly or by one of the tenant's aliases. An alias whose
    model the tenant may no longer use (deleted, or no longer shared) is not found, as that model would be.

    The one place a model name is resolved for serving: ``ResolvedModel.id`` is the model that runs (an alias's
    target); the answer still names the model as the client sent it (serving/backend.py)."""
    found = resolve_usable(s, t.organization_id, t.project_id, model, ctx.settings.base_model_paths())
    if found is None:
        raise model_not_found(model)
    return found


def resolve(ctx: AppContext, t: Tenant, model: str) -> ResolvedModel:
    """:func:`resolve_model` in a transaction of its own (blocking: off the event loop)."""
    with ctx.db.session() as s:
        return resolve_model(s, ctx, t, model)


@dataclass(frozen=True)
class ModelArchive:
    """A model as a ``.tar.gz`` to take home: its file name and its bytes, streamed (tunery/archive.py)."""

    filename: str
    chunks: Iterator[bytes]


class ModelService:
    """The models the caller can use. ``list``, ``retrieve`` and ``resolve`` block (database): run them off the
    event loop; ``delete`` is a coroutine (it unloads the model from the serving engine)."""

    def __init__(self, ctx: AppContext, tenant: Tenant, actor: Actor):
        self.ctx = ctx
        self.tenant = tenant
        self.actor = actor  # who the audit log says acted

    def list(self) -> ModelList:
        return ModelList(data=[*self._bases(), *(ft_model_object(row) for row in self._rows())])

    def list_encoded(self, encoding: Encoding) -> Sequence[bytes]:
        """:meth:`list`, encoded (api/encoded.py): the page kept whole for what its models show, and each fine-tuned
        model's kept for what it shows."""
        cache = self.ctx.encoded
        bases, rows = self._bases(), self._rows()

        def encode() -> list[bytes]:
            data = [encoding.encode(m) for m in bases]
            for row in rows:
                data.append(cache.encoded(encoding, ("model", *row), lambda row=row: ft_model_object(row)))  # type: ignore[misc]
            return data

        return cache.encoded_page(encoding, "models", [*((m.id, m.created) for m in bases), *rows], encode)

    def _bases(self) -> Sequence[Model]:
        bases = self.ctx.settings.base_model_paths()
        return [Model(id=name, created=_created(path), owned_by=BASE_OWNER) for name, path in bases.items()]

    def _rows(self) -> Sequence[AnyRow]:
        """The fine-tuned models the tenant may use (its own, and those shared with it), newest first: what their
        objects show."""
        with self.ctx.db.read() as conn:
            return list(conn.execute(_USABLE, self.tenant.params()))

    def retrieve(self, model: str) -> Model:
        bases = self.ctx.settings.base_model_paths()
        if model in bases:
            return Model(id=model, created=_created(bases[model]), owned_by=BASE_OWNER)
        with self.ctx.db.session() as s:
            resolved = resolve_model(s, self.ctx, self.tenant, model)
            row = s.scalar(select(FineTunedModel).where(FineTunedModel.id == resolved.id))
            assert row is not None
            # An alias is answered under its own name (as OpenAI answers `gpt-4o`), with its model's facts.
            return Model(id=model, created=row.created_at, owned_by=row.owned_by)

    def archive(self, model: str) -> ModelArchive:
        """A fine-tuned or checkpoint model the project may use (its own or shared with it) as a ``.tar.gz``: the
        folder the trainer wrote (the adapter or the whole model, the tokenizer and chat template), its manifest
        (the SHA-256 of every file) and its eval report when there is one. Blocking: the checks (the model, its
        manifest, each file's presence) are done here, before any byte is sent; the bytes are read as
        ``chunks`` is consumed, each file checked against its manifest on the way."""
        if model in self.ctx.settings.base_model_paths():
            raise InvalidRequest(
                f"`{model}` is a base model of this server; only fine-tuned and checkpoint models (ft:...) can be "
                "downloaded as an archive.",
                param="model",
                code="model_not_downloadable",
            )
        t = self.tenant
        with self.ctx.db.session() as s:
            row = usable_model(s, t.organization_id, t.project_id, model)  # its own, or shared with it
            if row is None:
                raise model_not_found(model)
            prefix, created, job_id, owner = row.object_prefix, row.created_at, row.job_id, row.project_id
        try:
            entries = checkpoint_entries(self.ctx.store, prefix)
        except CheckpointIncomplete as e:
            raise InvalidRequest(
                f"The model `{model}` cannot be downloaded: {e}. Only a complete checkpoint can.",
                param="model",
                code="model_incomplete",
            ) from None
        except CheckpointDamaged as e:
            raise Unavailable(
                f"The model `{model}` cannot be downloaded: {e}; ask the operator to restore it.",
                code="model_files_missing",
            ) from None
        with self.ctx.db.session() as s:
            record(
                s,
                EventType.MODEL_DOWNLOADED,
                self.actor,
                organization_id=t.organization_id,
                project_id=t.project_id,
                resource_id=model,
                details={"data": {"job_id": job_id, "owner_project_id": owner, "bytes": sum(e.size for e in entries)}},
            )
        top = safe_name(model)
        return ModelArchive(f"{top}.tar.gz", archive_stream(self.ctx.store, top, entries, created))

    def resolve(self, model: str) -> ResolvedModel:
        return resolve(self.ctx, self.tenant, model)

    def _forget(self, model: str) -> ModelRef:
        with self.ctx.db.session() as s:
            if not model.startswith("ft:") and project_alias(s, self.tenant, model) is not None:
                raise InvalidRequest(
                    f"`{model}` is an alias, not a model: delete it with DELETE /v1/tunery/aliases/{model}.",
                    param="model",
                    code="model_is_alias",
                )
            ref = model_ref(resolve_model(s, self.ctx, self.tenant, model))
            row = s.scalar(select(FineTunedModel).where(FineTunedModel.id == model))
            assert row is not None
            if row.project_id != self.tenant.project_id:
                raise PermissionDenied(
                    f"The model `{model}` was shared with your project by another one: only its own project can "
                    "delete it.",
                    param="model",
                )
            # Its own project's aliases keep it (re-point or delete them first); another project's alias of a shared
            # model is not named here, and is not found once the model is gone (as when its permission is deleted).
            aliases = s.scalars(
                select(ModelAlias.name)
                .where(ModelAlias.project_id == row.project_id, ModelAlias.model == model)
                .order_by(ModelAlias.name)
            ).all()
            if aliases:
                names = ", ".join(f"`{a}`" for a in aliases)
                raise InvalidRequest(
                    f"The model `{model}` is the current model of the alias(es) {names} of its project: re-point "
                    "or delete them first (/v1/tunery/aliases).",
                    param="model",
                    code="model_in_use",
                )
            delete_permissions(s, model)
            s.delete(row)
            record(
                s,
                EventType.MODEL_DELETED,
                self.actor,
                organization_id=row.organization_id,
                project_id=row.project_id,
                resource_id=model,
                details={"data": {"job_id": row.job_id}},
            )
            return ref

    async def delete(self, model: str) -> ModelDeleted:
        """Delete a fine-tuned model: from then on it is unknown here (404) and unloaded from the engine."""
        if model in self.ctx.settings.base_model_paths():
            raise InvalidRequest(f"{model} is a base model; only fine-tuned models can be deleted.", param="model")
        ref = await to_thread.run_sync(self._forget, model)
        if self.ctx.serving is not None:
            await self.ctx.serving.unload(ref)
        return ModelDeleted(id=model, deleted=True)
