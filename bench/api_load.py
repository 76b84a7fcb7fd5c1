"""Tunery's list and get calls under load, next to a bare FastAPI endpoint served the same way.

    PYTHONPATH=. .venv/bin/python bench/api_load.py [--clients 200] [--seconds 60] [--jobs 10000]
        [--store sqlite|postgresql] [--with-training] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

1. Fills a fresh metadata store (SQLite, or a new PostgreSQL database dropped at the end) directly, for speed:
   ``--jobs`` finished jobs (succeeded, failed, cancelled; OpenAI's fields and Tunery's stored extensions) with
   ``--events`` events each (messages and per-step metrics), ``--files`` files and ``--models`` fine-tuned models.
2. Starts ``tunery serve`` (``python -m api.cli serve``, role ``all``: the API, the scheduler and the embedded
   serving engine in one uvicorn process, as the embedded mode runs) on that store, whose only base model is the
   tiny Llama of the tests.
3. With ``--with-training``: a background process drives the server through the OpenAI SDK the whole time: one
   real fine-tuning job on the tiny model after another (a trainer process each), and chat completions on the
   tiny model one after another. The measurements start once a job trains and a chat has been answered.
4. The reference: a bare FastAPI app (one ``async def`` and one ``def`` route answering a small constant JSON
   object) run by ``uvicorn.run`` with the arguments ``tunery serve`` gives it, in its own process, driven by the
   same client for the same time (with ``--with-training``, while the background still trains and chats).
5. The load: ``--clients`` concurrent clients (coroutines of one ``aiohttp`` session in this process, a pool of
   ``--connections`` keep-alive connections), each calling one after another, for ``--seconds`` after a warm-up
   of ``--warmup`` seconds, spread evenly over six calls: ``GET /v1/fine_tuning/jobs`` (first page, or the page
   after a random job), ``/v1/fine_tuning/jobs/{id}``, ``/v1/fine_tuning/jobs/{id}/events``, ``/v1/files``,
   ``/v1/files/{id}`` and ``/v1/models``, ids drawn at random. Latency is from the request to the end of its body
   (waits for a pool connection included). Any answer other than 200, or a failed request, is an error.
6. ``/health`` is sampled in a separate process every ``--health-interval`` seconds on a new connection (as a
   probe does) throughout the Tunery load, on the API port (answered by its event loop) and on the probe port
   (TUNERY_PROBE_PORT: its own thread, from the loop's heartbeat; api/probe.py), which the chart's probes use.

Prints requests/s, p50 and p99 latency and errors of each target and each call, the server's and the client's
CPU use (cores), the load average when measured, the ``/health`` samples and Tunery's share of the bare endpoint's
requests/s (issue 11's target: at least 50%; ``/health`` under 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_stack import (  # noqa: E402
    TINY,
    Seeded,
    Server,
    ensure_tiny_model,
    metadata_store,
    seed,
    serve_bare,
    server_stack,
    start_bare,
    start_tunery,
)

CALLS = (
    "GET /v1/fine_tuning/jobs",
    "GET /v1/fine_tuning/jobs/{id}",
    "GET /v1/fine_tuning/jobs/{id}/events",
    "GET /v1/files",
    "GET /v1/files/{id}",
    "GET /v1/models",
)


# ---- helpers in their own processes: /health sampler, training and chats ----------------------------------------
def sample_health(url: str, interval: float) -> None:
    """Until stdin closes: GET /health on a new connection every ``interval`` s; then print the samples (JSON).

    With the standard library's ``http.client``, as lean as a kubelet's probe: an ``httpx.get`` builds a client and
    its TLS context each time, which alone took 60-120 ms of this process's CPU on the loaded machine, and was
    measured as the server's latency."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def wait_for_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    while not stop.is_set():
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=30)
        try:
            conn.request("GET", "/health")
            answer = conn.getresponse()
            answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException):
            status = 0
        finally:
            conn.close()
        samples.append((time.perf_counter() - t0, status))
        stop.wait(interval)
    print(json.dumps(samples))


def chat_lines(n: int) -> bytes:
    lines = []
    for i in range(n):
        q = f"Question number {i}?"
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": f"BEEP BOOP: {q} END OF LINE."}]
        lines.append(json.dumps({"messages": msgs}))
    return ("\n".join(lines) + "\n").encode()


def background(url: str) -> None:
    """Until stdin closes: one fine-tuning job on the tiny model after another, and chat completions one after
    another. Prints ``ready`` once a job trains and a chat was answered, and a JSON summary at the end."""
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=300)
    stop = threading.Event()
    summary: dict[str, Any] = {"jobs": {}, "chats": 0, "chat_errors": [], "chat_seconds": [], "job_errors": []}
    training, chatted = threading.Event(), threading.Event()

    def chats() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                client.chat.completions.create(
                    model=TINY, messages=[{"role": "user", "content": "Question number 3?"}], max_tokens=16
                )
                summary["chats"] += 1
                summary["chat_seconds"].append(time.perf_counter() - t0)
                chatted.set()
            except Exception as e:
                summary["chat_errors"].append(repr(e)[:200])
                stop.wait(1)

    def jobs() -> None:
        training_file = client.files.create(file=("train.jsonl", chat_lines(96)), purpose="fine-tune").id
        while not stop.is_set():
            job = client.fine_tuning.jobs.create(
                model=TINY,
                training_file=training_file,
                method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
            )
            status = job.status
            while not stop.is_set() and status not in ("succeeded", "failed", "cancelled"):
                stop.wait(0.5)
                try:
                    status = client.fine_tuning.jobs.retrieve(job.id).status
                except Exception as e:
                    summary["job_errors"].append(repr(e)[:200])
                    continue
                summary["jobs"][job.id] = status
                if status == "running":
                    training.set()
            if status == "failed":
                summary["job_errors"].append(f"{job.id} failed: {client.fine_tuning.jobs.retrieve(job.id).error}")

    threads = [threading.Thread(target=fn, daemon=True) for fn in (chats, jobs)]
    for t in threads:
        t.start()
    while not (training.is_set() and chatted.is_set()) and all(t.is_alive() for t in threads):
        time.sleep(0.2)
    print("ready" if training.is_set() and chatted.is_set() else "failed to start", flush=True)
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join(60)
    print(json.dumps(summary), flush=True)


@dataclass
class Helper:
    proc: subprocess.Popen[str]

    @classmethod
    def start(cls, *args: str) -> Helper:
        cmd = [sys.executable, __file__, "--internal", *args]
        return cls(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def finish(self, timeout: float = 120) -> Any:
        """Close its stdin (the signal to stop) and read the JSON it prints last."""
        out, _ = self.proc.communicate(timeout=timeout)  # closes stdin
        return json.loads(out.strip().splitlines()[-1])


# ---- the load -------------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    name: str
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    server_cpu: float = 0.0
    loop_cpu: float = 0.0
    client_cpu: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def all_latencies(self) -> list[float]:
        return [x for v in self.latencies.values() for x in v]

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def paths_for(seeded: Seeded) -> list[tuple[str, Any]]:
    """(call, function making a path) for each of the six calls."""
    jobs, files = seeded.job_ids, seeded.file_ids
    return [
        (CALLS[0], lambda r: "/v1/fine_tuning/jobs" + (f"?after={r.choice(jobs)}" if r.random() < 0.5 else "")),
        (CALLS[1], lambda r: f"/v1/fine_tuning/jobs/{r.choice(jobs)}"),
        (CALLS[2], lambda r: f"/v1/fine_tuning/jobs/{r.choice(jobs)}/events"),
        (CALLS[3], lambda r: "/v1/files"),
        (CALLS[4], lambda r: f"/v1/files/{r.choice(files)}"),
        (CALLS[5], lambda r: "/v1/models"),
    ]


async def drive(
    name: str,
    server: Server,
    calls: list[tuple[str, Any]],
    clients: int,
    connections: int,
    warmup: float,
    seconds: float,
) -> Measured:
    import aiohttp

    out = Measured(name, seconds, latencies={c: [] for c, _ in calls}, errors={c: 0 for c, _ in calls})
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Authorization": "Bearer bench"}
    loop = asyncio.get_running_loop()
    t_start = loop.time() + warmup
    t_end = t_start + seconds
    marks: dict[str, float] = {}

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        r = random.Random(i)
        k = i
        while loop.time() < t_end:
            call, make = calls[k % len(calls)]
            k += 1
            t0 = loop.time()
            try:
                async with session.get(server.url + make(r)) as resp:
                    await resp.read()
                    ok = resp.status == 200
                    problem = f"{call}: HTTP {resp.status}"
            except Exception as e:
                ok, problem = False, f"{call}: {e!r}"[:300]
            t1 = loop.time()
            if not ok:
                out.errors[call] += 1
                if len(out.error_examples) < 5:
                    out.error_examples.append(problem)
            elif t_start <= t1 <= t_end:
                out.latencies[call].append(t1 - t0)

    async def mark() -> None:
        await asyncio.sleep(max(0.0, t_start - loop.time()))
        marks["server"], marks["loop"], marks["client"] = (
            server.cpu_seconds(),
            server.cpu_seconds(loop_thread=True),
            time.process_time(),
        )
        await asyncio.sleep(max(0.0, t_end - loop.time()))
        out.server_cpu = (server.cpu_seconds() - marks["server"]) / seconds
        out.loop_cpu = (server.cpu_seconds(loop_thread=True) - marks["loop"]) / seconds
        out.client_cpu = (time.process_time() - marks["client"]) / seconds
        out.load = os.getloadavg()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        await asyncio.gather(mark(), *(client(i, session) for i in range(clients)))
    return out


def profile(server: Server, out: str, warmup: float, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (next to this interpreter, or on PATH) records ``server`` from the end of the warm-up, for ``seconds``."""
    spy = Path(sys.executable).parent / "py-spy"
    exe = str(spy) if spy.exists() else shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    cmd = [
        exe,
        "record",
        "--gil",
        "--threads",
        "--rate",
        "200",
        "--format",
        "raw",
        "-d",
        str(int(seconds)),
        "-o",
        out,
    ]
    script = f"sleep {warmup}; exec " + " ".join(cmd) + f" -p {server.proc.pid} >/dev/null 2>&1"
    return subprocess.Popen(["sh", "-c", script])


# ---- the report -----------------------------------------------------------------------------------------------------
def row(label: str, lat: list[float], seconds: float, errors: int, extra: str = "") -> str:
    return (
        f"{label:<40} {len(lat) / seconds:>10.1f} {1000 * pct(lat, 0.5):>9.1f} {1000 * pct(lat, 0.99):>9.1f} "
        f"{errors:>7d}{extra}"
    )


def report(results: list[Measured], health: dict[str, list[tuple[float, int]]], bg: dict[str, Any] | None) -> None:
    print()
    print(
        f"{'target':<40} {'requests/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}  server CPU (loop)  "
        "CPU ms/req  client CPU  load"
    )
    for m in results:
        lat = m.all_latencies()
        per = 1000 * m.server_cpu * m.seconds / max(1, len(lat))
        extra = f"  {m.server_cpu:>10.2f} ({m.loop_cpu:.2f})  {per:>10.2f}  {m.client_cpu:>10.2f}   {m.load[0]:.1f}"
        print(row(m.name, lat, m.seconds, m.n_errors, extra))
        if len(m.latencies) > 1:
            for call, values in m.latencies.items():
                print(row(f"  {call}", values, m.seconds, m.errors[call]))
        for e in m.error_examples:
            print(f"  error: {e}")
    for where, samples in health.items():
        lat = [t for t, status in samples if status == 200]
        bad = sum(1 for _, status in samples if status != 200)
        over = sum(1 for t in lat if t >= 0.1)
        print(
            f"\n/health on {where} during the Tunery load: {len(samples)} samples, p50 {1000 * pct(lat, 0.5):.1f} ms, "
            f"p99 {1000 * pct(lat, 0.99):.1f} ms, max {1000 * max(lat, default=float('nan')):.1f} ms, "
            f"{over} at 100 ms or more, {bad} errors (target: under 100 ms)"
        )
    tunery = [m for m in results if m.name.startswith("Tunery")]
    for ref in (m for m in results if m.name.startswith("bare")):
        ref_rate = len(ref.all_latencies()) / ref.seconds
        for t in tunery:
            rate = len(t.all_latencies()) / t.seconds
            print(f"{t.name} / {ref.name}: {100 * rate / ref_rate:.1f}% of its requests/s (target: at least 50%)")
    if bg is not None:
        jobs = bg["jobs"]
        done = {s: sum(1 for v in jobs.values() if v == s) for s in ("succeeded", "failed", "cancelled")}
        print(
            f"background: {len(jobs)} training jobs ({done['succeeded']} succeeded, {done['failed']} failed), "
            f"{bg['chats']} chat completions (p50 {pct(bg['chat_seconds'], 0.5):.2f} s), "
            f"{len(bg['chat_errors'])} chat errors, {len(bg['job_errors'])} job errors"
        )
        for e in (bg["chat_errors"] + bg["job_errors"])[:5]:
            print(f"  background error: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--connections", type=int, default=0, help="client connection pool size (0: one per client)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=10, help="events per job")
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--with-training", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the bare FastAPI reference")
    ap.add_argument("--health-interval", type=float, default=0.25)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs)")
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy the Tunery server during its measured load: collapsed stacks of the GIL holder, by thread",
    )
    ap.add_argument("--internal", choices=("serve-bare", "health", "background"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.internal == "serve-bare":
        return serve_bare(args.port)
    if args.internal == "health":
        return sample_health(args.url, args.health_interval)
    if args.internal == "background":
        return background(args.url)

    connections = args.connections or args.clients
    tmp = Path(tempfile.mkdtemp(prefix="tunery-load-"))
    servers: list[Server] = []
    helpers: list[Helper] = []
    try:
        if args.with_training:
            ensure_tiny_model()
        with metadata_store(args.store, args.pg, tmp) as url:
            seeded = seed(url, args.jobs, args.files, args.events, args.models)
            print(
                f"{args.store}: {len(seeded.job_ids):,} jobs, {seeded.events:,} events, {len(seeded.file_ids)} files, "
                f"{seeded.models} models stored in {seeded.seconds:.1f} s; {args.clients} clients "
                f"({connections} connections), {args.seconds:.0f} s after {args.warmup:.0f} s of warm-up, "
                f"{'with' if args.with_training else 'without'} training; servers on {server_stack()}; "
                f"{os.cpu_count()} cores, "
                f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
                flush=True,
            )
            tunery = start_tunery(tmp, url)
            servers.append(tunery)
            bg = None
            if args.with_training:
                bg = Helper.start("background", "--url", tunery.url)
                helpers.append(bg)
                line = bg.readline()
                if line != "ready":
                    raise RuntimeError(f"the background did not start training and chatting: {line!r}")
                print("background: a job trains and chats are answered", flush=True)
            results = []
            if not args.no_reference:
                bare = start_bare(tmp)
                servers.append(bare)
                for kind in ("async", "sync"):
                    name = f"bare FastAPI ({'async def' if kind == 'async' else 'def'})"
                    call = [(f"GET /bare/{kind}", lambda r, kind=kind: f"/bare/{kind}")]
                    results.append(
                        asyncio.run(drive(name, bare, call, args.clients, connections, args.warmup, args.seconds))
                    )
                    print(f"measured {name}", flush=True)
                bare.stop()
            # A probe of each /health: the API port's (answered by the event loop) and the probe port's (its own
            # thread, api/probe.py), which the chart's probes use.
            samplers = {
                where: Helper.start("health", "--url", base, "--health-interval", str(args.health_interval))
                for where, base in (("the API port", tunery.url), ("the probe port", tunery.probe_url))
            }
            helpers.extend(samplers.values())
            calls = paths_for(seeded)
            spy = profile(tunery, args.profile, args.warmup, args.seconds) if args.profile else None
            results.append(
                asyncio.run(
                    drive("Tunery (6 calls)", tunery, calls, args.clients, connections, args.warmup, args.seconds)
                )
            )
            if spy is not None:
                spy.wait()
                print(f"profile: {args.profile}", flush=True)
            health_samples = {where: sampler.finish() for where, sampler in samplers.items()}
            summary = bg.finish(timeout=300) if bg is not None else None
            tunery.stop()
            report(results, health_samples, summary)
    finally:
        for h in helpers:
            if h.proc.poll() is None:
                h.proc.kill()
        for s in servers:
            s.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
