"""The demo: what a user does, through the OpenAI SDK only.

It starts ``tunery serve``, uploads a small chat dataset that teaches a made-up answer format, fine-tunes
SmolLM2-135M-Instruct with LoRA while showing progress, then asks held-out questions of the base model and
of the fine-tuned model and prints the answers side by side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tunery.jobstate import TERMINAL, JobStatus
from tunery.ports import free_port
from tunery.settings import DEMO_MODEL

SUFFIX = "beep-boop"
SEED = 42
# 40 examples x 3 epochs at batch size 1: 120 steps, a minute or two on 2 CPU cores.
DEMO_HYPERPARAMETERS: dict[str, Any] = {"n_epochs": 3, "batch_size": 1}


def demo_data() -> tuple[Path, list[str]]:
    root = resources.files("tunery") / "demo"
    heldout = json.loads((root / "heldout.json").read_text())
    return Path(str(root / "train.jsonl")), heldout


def start_server(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
    env = {**os.environ, "TUNERY_DATA_DIR": str(data_dir), "TUNERY_PORT": str(port), "TUNERY_HOST": "127.0.0.1"}
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the server did not become healthy")


def ask(client: OpenAI, model: str, question: str) -> str:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=48
    )
    return (r.choices[0].message.content or "").strip()


def fine_tune(client: OpenAI, console: Console, train: Path) -> str:
    """Upload, create the job, follow it to the end; returns the fine-tuned model's name."""
    with open(train, "rb") as f:
        uploaded = client.files.create(file=f, purpose="fine-tune")
    console.print(f"Uploaded [bold]{uploaded.filename}[/] as {uploaded.id} ({uploaded.bytes} bytes)")
    job = client.fine_tuning.jobs.create(
        model=DEMO_MODEL,
        training_file=uploaded.id,
        suffix=SUFFIX,
        seed=SEED,
        method={"type": "supervised", "supervised": {"hyperparameters": DEMO_HYPERPARAMETERS}},  # type: ignore[arg-type]
    )
    console.print(f"Created fine-tuning job {job.id} ({job.status})")
    seen: set[str] = set()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("training", total=None, loss="")
        while True:
            job = client.fine_tuning.jobs.retrieve(job.id)
            events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
            for ev in reversed(events):
                if ev.id in seen:
                    continue
                seen.add(ev.id)
                if ev.type == "metrics" and ev.data:
                    data: dict[str, Any] = dict(ev.data)  # type: ignore[call-overload]
                    progress.update(
                        task,
                        completed=data.get("step", 0),
                        total=data.get("total_steps"),
                        loss=f"loss {data.get('train_loss', float('nan')):.3f}",
                    )
                else:
                    progress.console.print(f"  [dim]{ev.message}[/]")
            if job.status in TERMINAL:
                break
            time.sleep(1)
    if job.status != JobStatus.succeeded or not job.fine_tuned_model:
        raise RuntimeError(f"the job ended {job.status}: {job.error}")
    console.print(f"Fine-tuned model: [bold green]{job.fine_tuned_model}[/] ({job.trained_tokens} tokens trained)")
    return job.fine_tuned_model


def run_demo(port: int = 0, data_dir: Path = Path("tunery-demo"), keep_serving: bool = False) -> int:
    console = Console()
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    console.rule("Tunery demo")
    console.print(f"Starting [bold]tunery serve[/] on {base} (state in {data_dir}/, log in {data_dir}/server.log)")
    proc = start_server(port, data_dir)
    try:
        wait_healthy(base, proc)
        console.print(f"Server ready in {time.monotonic() - started:.1f}s")
        client = OpenAI(base_url=f"{base}/v1", api_key="tunery-demo")
        train, heldout = demo_data()
        model = fine_tune(client, console, train)
        first = ask(client, model, heldout[0])
        to_first_answer = time.monotonic() - started
        table = Table(title="Held-out questions (not in the training file)", show_lines=True)
        table.add_column("question", style="bold")
        table.add_column(f"base: {DEMO_MODEL}")
        table.add_column(f"fine-tuned: {model}", style="green")
        for i, q in enumerate(heldout):
            table.add_row(q, ask(client, DEMO_MODEL, q), first if i == 0 else ask(client, model, q))
        console.print(table)
        console.print(f"Time from server start to the first fine-tuned answer: [bold]{to_first_answer:.1f}s[/]")
        if keep_serving:
            console.print(f"The server keeps running on {base}/v1 (pid {proc.pid}); Ctrl-C stops it.")
            proc.wait()
        return 0
    except (KeyboardInterrupt, RuntimeError, TimeoutError) as e:
        console.print(f"[red]demo failed: {e}[/] (see {data_dir}/server.log)")
        return 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
