"""Cursor pagination as OpenAI does it: ``after`` is the id of the last object of the previous page.

One rule for every list: ``limit`` is at least 1 and has no maximum a client can trip on (a page holds at most
:data:`MAX_PAGE` objects, however many were asked for); an ``after`` that names no object of the list (never existed,
deleted, or another list's) is the end of the list, an empty page, never a 400 (a checkpoint whose model was
deleted keeps its place); every list answers
``first_id`` and ``last_id`` as strings (empty when the page is: :class:`api.protocol.base.CursorPage`).
"""

from __future__ import annotations

from typing import Any, TypeAlias

from fastapi import Query
from sqlalchemy import Row, Select
from sqlalchemy.orm import Session

MAX_PAGE = 10_000  # OpenAI's largest documented page (files)

# A query and a row of any columns (``select(Job.id, Job.version)``), as :func:`page` takes and returns them.
AnySelect: TypeAlias = Select[*tuple[Any, ...]]
AnyRow: TypeAlias = Row[*tuple[Any, ...]]


def limit_param(default: int) -> Any:
    """The ``limit`` query parameter of a list route, with the list's default."""
    return Query(default, ge=1, description=f"Objects per page (default {default}; pages hold at most {MAX_PAGE}).")


def page(
    session: Session,
    model: Any,
    query: AnySelect,
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
    cursors: AnySelect | None = None,
    columns: bool = False,
) -> tuple[list[Any], bool]:
    """One page of ``query``'s rows ordered by creation (pk), after the row whose id is ``after``; returns
    (rows, has_more). ``after`` is looked up in ``cursors`` (default: ``query``), a wider query where rows that
    leave the list keep their place (a checkpoint whose model was deleted). With ``columns``, ``query`` selects
    columns (``select(Job.id, Job.version)``) and the rows are tuples of them, not ORM objects."""
    limit = min(limit, MAX_PAGE)
    if after:
        where = query if cursors is None else cursors
        cursor = session.scalar(where.with_only_columns(model.pk).where(model.id == after))
        if cursor is None:
            return [], False
        query = query.where(model.pk < cursor if newest_first else model.pk > cursor)
    query = query.order_by(model.pk.desc() if newest_first else model.pk.asc()).limit(limit + 1)
    rows = list(session.execute(query).all()) if columns else list(session.scalars(query))
    return rows[:limit], len(rows) > limit
