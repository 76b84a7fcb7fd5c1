"""The same calls through the public gRPC API and through REST, on the same running server.

    PYTHONPATH=. .venv/bin/python bench/grpc_vs_rest.py [--jobs 10000] [--seconds 10] [--concurrency 1 32]

Fills a fresh SQLite (or ``--store postgresql``) metadata store with ``--jobs`` finished jobs of ``--events``
events each (bench/api_load.py's seeding), starts ``tunery serve`` on it, then for each call and each concurrency
runs REST (``aiohttp``, one keep-alive connection per client) and gRPC (``grpc.aio``, one channel, HTTP/2 streams)
in turn for ``--seconds`` each, after a warm-up:

* ``get job``: ``GET /v1/fine_tuning/jobs/{id}`` / ``FineTuningService.GetJob``, a random job each time;
* ``list jobs``: ``GET /v1/fine_tuning/jobs`` (first page of 20, or the page after a random job) / ``ListJobs``;
* ``list events``: a page of a job's events: ``GET .../events`` / ``ListEvents``;
* ``watch events``: all of a finished job's events: ``GET .../events?limit=100`` (one body) / the ``WatchEvents``
  stream (one message per event, replayed from the start; it ends with the job, which has ended);
* ``watch pages``: the same, through ``WatchEventPages`` (the replay in pages of up to 200 events a message).

Prints requests/s and p50/p99 latency of each, and the ratio gRPC / REST (issue 13's target: at least 1 for every
call).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_load import pct  # noqa: E402
from bench.api_stack import metadata_store, seed, start_tunery  # noqa: E402
from tunery.ports import free_port  # noqa: E402

Call = Callable[[random.Random], Awaitable[Any]]


async def measure(call: Call, concurrency: int, warmup: float, seconds: float) -> tuple[float, list[float], int]:
    """(requests/s, latencies, errors) of ``concurrency`` clients calling ``call`` back to back."""
    loop = asyncio.get_running_loop()
    t_start = loop.time() + warmup
    t_end = t_start + seconds
    latencies: list[float] = []
    errors = 0

    async def client(i: int) -> None:
        nonlocal errors
        r = random.Random(i)
        while loop.time() < t_end:
            t0 = loop.time()
            try:
                await call(r)
            except Exception:
                errors += 1
                continue
            t1 = loop.time()
            if t_start <= t1 <= t_end:
                latencies.append(t1 - t0)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return len(latencies) / seconds, latencies, errors


async def run(args: argparse.Namespace, base: str, grpc_address: str, job_ids: list[str]) -> None:
    print(
        f"{'call':<13} {'clients':>7} {'REST r/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'gRPC r/s':>9} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'gRPC/REST':>9}  errors"
    )
    for concurrency in args.concurrency:
        await run_cells(args, base, grpc_address, job_ids, concurrency)


async def run_cells(
    args: argparse.Namespace, base: str, grpc_address: str, job_ids: list[str], concurrency: int
) -> None:
    import aiohttp
    import grpc

    from tunery.v1 import fine_tuning_pb2 as ft
    from tunery.v1 import fine_tuning_pb2_grpc

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        grpc.aio.insecure_channel(grpc_address) as channel,
    ):
        jobs = fine_tuning_pb2_grpc.FineTuningServiceStub(channel)

        async def rest(path: str) -> Any:
            async with session.get(base + path) as resp:
                if resp.status != 200:
                    raise RuntimeError(resp.status)
                return await resp.read()

        def after(r: random.Random) -> str | None:
            return r.choice(job_ids) if r.random() < 0.5 else None

        async def watch(job_id: str) -> list[Any]:
            return [e async for e in jobs.WatchEvents(ft.WatchEventsRequest(job_id=job_id), timeout=60)]

        async def watch_pages(job_id: str) -> list[Any]:
            request = ft.WatchEventsRequest(job_id=job_id)
            return [e async for page in jobs.WatchEventPages(request, timeout=60) for e in page.data]

        calls: dict[str, tuple[Call, Call]] = {
            "get job": (
                lambda r: rest(f"/v1/fine_tuning/jobs/{r.choice(job_ids)}"),
                lambda r: jobs.GetJob(ft.GetJobRequest(job_id=r.choice(job_ids)), timeout=60),
            ),
            "list jobs": (
                lambda r: rest("/v1/fine_tuning/jobs" + (f"?after={a}" if (a := after(r)) else "")),
                lambda r: jobs.ListJobs(ft.ListJobsRequest(after=after(r)), timeout=60),
            ),
            "list events": (
                lambda r: rest(f"/v1/fine_tuning/jobs/{r.choice(job_ids)}/events"),
                lambda r: jobs.ListEvents(ft.ListEventsRequest(job_id=r.choice(job_ids)), timeout=60),
            ),
            "watch events": (
                lambda r: rest(f"/v1/fine_tuning/jobs/{r.choice(job_ids)}/events?limit=100"),
                lambda r: watch(r.choice(job_ids)),
            ),
            "watch pages": (
                lambda r: rest(f"/v1/fine_tuning/jobs/{r.choice(job_ids)}/events?limit=100"),
                lambda r: watch_pages(r.choice(job_ids)),
            ),
        }
        for name, (rest_call, grpc_call) in calls.items():
            figures = []
            for call in (rest_call, grpc_call):
                figures.append(await measure(call, concurrency, args.warmup, args.seconds))
            (r_rps, r_lat, r_err), (g_rps, g_lat, g_err) = figures
            print(
                f"{name:<13} {concurrency:>7} {r_rps:>9.1f} {pct(r_lat, 0.5) * 1e3:>7.1f} "
                f"{pct(r_lat, 0.99) * 1e3:>7.1f} {g_rps:>9.1f} {pct(g_lat, 0.5) * 1e3:>7.1f} "
                f"{pct(g_lat, 0.99) * 1e3:>7.1f} {g_rps / r_rps if r_rps else float('nan'):>9.2f}  {r_err}/{g_err}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=10, help="events per job")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tunery-grpc-bench-"))
    try:
        with metadata_store(args.store, args.pg, tmp) as url:
            seeded = seed(url, args.jobs, 10, args.events, 10)
            grpc_port = free_port()
            os.environ["TUNERY_API_GRPC_PORT"] = str(grpc_port)
            server = start_tunery(tmp, url)
            try:
                print(
                    f"{args.store}: {len(seeded.job_ids):,} jobs of {args.events} events; {os.cpu_count()} cores, "
                    f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.seconds:.0f} s per cell",
                    flush=True,
                )
                t0 = time.monotonic()
                asyncio.run(run(args, server.url, f"127.0.0.1:{grpc_port}", seeded.job_ids))
                print(f"({time.monotonic() - t0:.0f} s)")
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
