"""Cursor pagination as OpenAI does it: ``after`` is the id of the last object of the previous page.

One rule for every list: ``limit`` is at least 1 and has no maximum a client can trip on (a page holds at most
:data:`MAX_PAGE` objects, however many were asked for); an ``after`` that names no object of the list (never existed,
deleted, or another list's) is the end of the list, an empty page, never a 400 (a checkpoint whose model was
deleted keeps its place); every list answers
``first_id`` and ``last_id`` as strings (empty when the page is: :class:`api.protocol.base.CursorPage`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from fastapi import Query
from sqlalchemy import BindParameter, Connection, Integer, Row, Select, bindparam
from sqlalchemy.orm import Session

MAX_PAGE = 10_000  # OpenAI's largest documented page (files)

# A query and a row of any columns (``select(Job.id, Job.version)``), as :func:`page` takes and returns them.
AnySelect: TypeAlias = Select[*tuple[Any, ...]]
AnyRow: TypeAlias = Row[*tuple[Any, ...]]


def limit_param(default: int) -> Any:
    """The ``limit`` query parameter of a list route, with the list's default."""
    return Query(default, ge=1, description=f"Objects per page (default {default}; pages hold at most {MAX_PAGE}).")


# The bound parameters of a page's queries (named apart from any a list's own query binds).
_AFTER, _LIMIT = "page_after", "page_limit"


class Pager:
    """One list's page queries, built once: the first page, and the page after a cursor; run with the list's own
    bound parameters by :meth:`page`. The lists that clients poll keep theirs as module constants (building a
    SQLAlchemy statement costs about twice what running it on SQLite does); :func:`page` builds one per call.

    ``query`` selects the list's rows (ORM objects, or columns with ``columns``: ``select(Job.id, Job.version)``,
    whose rows are tuples); they are ordered by creation (pk), newest first unless ``newest_first`` is false. The
    ``after`` cursor, the id of the last object of the previous page, is looked up in ``cursors`` (default:
    ``query``), a wider query where rows that leave the list keep their place (a checkpoint whose model was deleted),
    in the same statement: an id it does not find gives an empty page."""

    def __init__(
        self,
        model: Any,
        query: AnySelect,
        *,
        newest_first: bool = True,
        cursors: AnySelect | None = None,
        columns: bool = False,
    ):
        pk = model.pk
        order = pk.desc() if newest_first else pk.asc()
        found = (query if cursors is None else cursors).with_only_columns(pk).where(model.id == bindparam(_AFTER))
        # Not correlated: the cursor is looked up on its own, though the list reads the same table.
        cursor = found.correlate(None).scalar_subquery()
        limit: BindParameter[int] = bindparam(_LIMIT, type_=Integer())
        self.first = query.order_by(order).limit(limit)
        self.after = query.where(pk < cursor if newest_first else pk > cursor).order_by(order).limit(limit)
        self.columns = columns

    def page(
        self, conn: Session | Connection, params: Mapping[str, Any], *, after: str | None, limit: int
    ) -> tuple[list[Any], bool]:
        """(rows, has_more): at most ``limit`` rows (and never more than :data:`MAX_PAGE`) after the row whose id is
        ``after``; ``params`` binds the list's own parameters. ORM rows need a ``Session``."""
        limit = min(limit, MAX_PAGE)
        values = {**params, _LIMIT: limit + 1}
        if after:
            values[_AFTER] = after
        stmt = self.after if after else self.first
        if self.columns:
            rows = list(conn.execute(stmt, values).all())
        else:
            assert isinstance(conn, Session), "a page of ORM objects is read in a Session"
            rows = list(conn.scalars(stmt, values))
        return rows[:limit], len(rows) > limit


def page(
    session: Session | Connection,
    model: Any,
    query: AnySelect,
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
    cursors: AnySelect | None = None,
    columns: bool = False,
) -> tuple[list[Any], bool]:
    """One page of ``query``'s rows, as :class:`Pager` reads it (a pager built for this call): (rows, has_more)."""
    pager = Pager(model, query, newest_first=newest_first, cursors=cursors, columns=columns)
    return pager.page(session, {}, after=after, limit=limit)
