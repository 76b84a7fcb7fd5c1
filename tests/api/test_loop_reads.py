"""Where a read route's blocking work runs (api/context.py's ``run_read``): on the event loop, a few reads a pass of
the loop, on a local store; in the read threads on a network one; an object-store read of S3 in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event

from api.context import READS_PER_TURN, AppContext, LoopReads, run_read
from tunery.db import Database
from tunery.settings import Settings
from tunery.storage import LocalObjectStore


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'meta.db'}")
    yield database
    database.engine.dispose()


def _ctx(tmp_path: Path, db: Database, **settings: object) -> AppContext:
    return AppContext(Settings(data_dir=tmp_path, **settings), db, LocalObjectStore(tmp_path / "objects"))  # type: ignore[arg-type]


def test_queued_reads_run_in_order_a_few_a_pass_of_the_loop() -> None:
    reads = LoopReads()
    passes = 0
    seen: list[tuple[int, int]] = []  # (read, the pass it ran in)

    async def ticker() -> None:
        nonlocal passes
        while True:
            passes += 1
            await asyncio.sleep(0)

    def read(i: int) -> int:
        seen.append((i, passes))
        return i * i

    async def main() -> list[int]:
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            return await asyncio.gather(*(reads.run(read, i) for i in range(5 * READS_PER_TURN + 3)))
        finally:
            tick.cancel()

    answers = asyncio.run(main())
    assert answers == [i * i for i in range(5 * READS_PER_TURN + 3)]
    assert [i for i, _ in seen] == list(range(5 * READS_PER_TURN + 3))  # in the order they came
    by_pass: dict[int, int] = {}
    for _, p in seen:
        by_pass[p] = by_pass.get(p, 0) + 1
    # Never more than READS_PER_TURN in one pass: the loop turned (the ticker ran) between the groups.
    assert max(by_pass.values()) == READS_PER_TURN and len(by_pass) == 6


def test_a_read_that_fails_fails_its_request_only_and_a_gone_request_is_not_read() -> None:
    reads = LoopReads(per_turn=2)
    ran: list[str] = []

    def ok(name: str) -> str:
        ran.append(name)
        return name

    def fails() -> str:
        ran.append("fails")
        raise LookupError("no such row")

    async def main() -> tuple[object, ...]:
        gone = asyncio.create_task(reads.run(ok, "gone"))
        await asyncio.sleep(0)  # queued
        gone.cancel()
        return tuple(await asyncio.gather(reads.run(fails), reads.run(ok, "after"), return_exceptions=True))

    failed, after = asyncio.run(main())
    assert isinstance(failed, LookupError) and after == "after"
    assert ran == ["fails", "after"]  # the request that left was skipped, and the queue went on after the error


def test_each_event_loop_has_its_queue() -> None:
    reads = LoopReads(per_turn=1)
    results: list[list[int]] = []

    def run_on_new_loop() -> None:
        async def main() -> list[int]:
            return list(await asyncio.gather(*(reads.run(lambda i=i: i) for i in range(3))))

        results.append(asyncio.run(main()))

    workers = [threading.Thread(target=run_on_new_loop) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    run_on_new_loop()
    assert results == [[0, 1, 2]] * 4


def test_where_run_read_runs(tmp_path: Path, db: Database) -> None:
    """On the loop's thread by default on SQLite; in the read threads when there are some; an object-store read
    leaves the loop when the object store is not a local folder."""

    async def where(ctx: AppContext, objects: bool = False) -> str:
        loop_thread = threading.current_thread().name
        name = await run_read(ctx, lambda: threading.current_thread().name, objects=objects)
        return "loop" if name == loop_thread else name

    on_sqlite = _ctx(tmp_path, db)
    assert on_sqlite.read_threads is None
    assert asyncio.run(where(on_sqlite)) == "loop"
    assert asyncio.run(where(on_sqlite, objects=True)) == "loop"  # a folder: local too
    on_sqlite.store.local = False  # as S3's
    assert asyncio.run(where(on_sqlite, objects=True)) != "loop"

    threaded = _ctx(tmp_path, db, api_read_threads=2)
    try:
        assert asyncio.run(where(threaded)).startswith("tunery-read")
    finally:
        threaded.close()


def test_a_turn_of_reads_shares_one_connection_and_each_read_sees_what_was_committed_before_it(
    tmp_path: Path, db: Database
) -> None:
    """``Database.holding``: the reads of a turn take one connection from the pool, not one each; each read's
    transaction ends with it, so a write committed by another connection between two reads is seen by the second."""
    from sqlalchemy import text

    with db.session() as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
    other = Database(db.url)
    checkouts: list[object] = []
    event.listen(db.engine, "checkout", lambda *a: checkouts.append(a))
    used: list[int] = []

    def count(write: bool) -> int:
        if write:
            with other.session() as s:
                s.execute(text("INSERT INTO t VALUES (1)"))
        with db.read() as conn:
            used.append(id(conn))
            return int(conn.execute(text("SELECT count(*) FROM t")).scalar_one())

    reads = LoopReads(hold=db.holding)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(reads.run(count, i % 2 == 1) for i in range(4))))

    try:
        assert asyncio.run(main()) == [0, 1, 1, 2]
        assert len(set(used)) == 1 and len(checkouts) == 1
    finally:
        other.engine.dispose()


def test_a_hold_that_fails_fails_its_turn_s_requests_and_the_next_turn_goes_on() -> None:
    holds = 0

    @contextmanager
    def hold() -> Iterator[None]:
        nonlocal holds
        holds += 1
        if holds == 1:
            raise ConnectionError("the metadata store is gone")
        yield

    reads = LoopReads(per_turn=2, hold=hold)

    async def main() -> list[object]:
        return list(await asyncio.gather(*(reads.run(lambda i=i: i) for i in range(4)), return_exceptions=True))

    first, second, third, fourth = asyncio.run(main())
    assert isinstance(first, ConnectionError) and isinstance(second, ConnectionError)
    assert (third, fourth) == (2, 3)
