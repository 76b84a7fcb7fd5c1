"""Cursor pagination as OpenAI does it: ``after`` is the id of the last object of the previous page."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from api.errors import bad_request


def page(
    session: Session,
    model: Any,
    query: Select[Any],
    *,
    after: str | None,
    limit: int,
    newest_first: bool = True,
    after_param: str = "after",
) -> tuple[list[Any], bool]:
    """One page of rows ordered by creation (pk); returns (rows, has_more)."""
    if after:
        cursor = session.scalar(select(model.pk).where(model.id == after))
        if cursor is None:
            raise bad_request(f"No such object for '{after_param}': {after}", param=after_param)
        query = query.where(model.pk < cursor if newest_first else model.pk > cursor)
    query = query.order_by(model.pk.desc() if newest_first else model.pk.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def list_object(data: list[dict[str, Any]], has_more: bool, with_ids: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if with_ids:
        out["first_id"] = data[0]["id"] if data else None
        out["last_id"] = data[-1]["id"] if data else None
    return out
