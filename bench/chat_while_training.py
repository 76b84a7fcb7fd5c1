r"""A user chatting with the embedded server while it trains, as the product runs it: ``tunery serve`` on the demo
model, the demo job training (batch 1), and for a minute in the middle one chat after another through the OpenAI
SDK. Prints the trainer's tokens/s before, during and after the chats (from the trainer's own log lines), the
chats' output tokens/s, and the job's events about its CPU threads.

    .venv/bin/python bench/chat_while_training.py [--serving-threads N] [--chat-seconds 60] [--max-tokens 32]

``--serving-threads N`` sets ``TUNERY_SERVING_THREADS``: the engine takes N threads and the trainers keep theirs
(N = every core is how the server ran before the cores were shared, scheduler/cores.py); unset, they share them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tunery.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
STEP = re.compile(r"^step \d+/\d+ .* tok/s ([0-9.]+)", re.M)
CHAT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a short story about a robot who learns to paint."}
]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serving-threads", type=int, default=0, help="TUNERY_SERVING_THREADS (0: shared)")
    parser.add_argument("--chat-seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--warm-steps", type=int, default=15, help="steps trained before the chats start")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="tunery-chat-bench-"))
    port = free_port()
    env = {**os.environ, "TUNERY_DATA_DIR": str(data), "TUNERY_PORT": str(port), "TUNERY_API_GRPC_PORT": "-1"}
    env["TUNERY_GRPC_PORT"] = "0"
    if args.serving_threads:
        env["TUNERY_SERVING_THREADS"] = str(args.serving_threads)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "tunery"), "serve"],
        env=env,
        cwd=ROOT,
        stdout=(data / "server.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=3)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                client.models.list()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the server did not start: {data / 'server.log'}") from None
                time.sleep(1)
        train = client.files.create(file=(ROOT / "tunery" / "demo" / "train.jsonl").open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=MODEL,
            training_file=train.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 1}}},
        )

        def steps() -> list[float]:
            logs = list((data / "logs").glob(f"*{job.id}*"))
            return [float(m.group(1)) for m in STEP.finditer(logs[0].read_text())] if logs else []

        while len(steps()) < args.warm_steps:
            time.sleep(1)
        answers: list[tuple[float, int]] = []
        chatting = threading.Event()
        chatting.set()

        def chat() -> None:
            while chatting.is_set():
                started = time.perf_counter()
                answer = client.chat.completions.create(
                    model=MODEL, messages=CHAT, max_tokens=args.max_tokens, temperature=0
                )
                tokens = answer.usage.completion_tokens if answer.usage else 0
                answers.append((time.perf_counter() - started, tokens))

        before = len(steps())
        user = threading.Thread(target=chat, name="chat")
        user.start()
        time.sleep(args.chat_seconds)
        chatting.clear()
        user.join()
        during = len(steps())
        time.sleep(args.chat_seconds * 0.75)
        rates = steps()
        if client.fine_tuning.jobs.retrieve(job.id).status == "running":
            client.fine_tuning.jobs.cancel(job.id)
        label = f"TUNERY_SERVING_THREADS={args.serving_threads}" if args.serving_threads else "shared cores"
        output = sum(n for _, n in answers) / sum(s for s, _ in answers)
        # The first steps after the chats end still run with what the chats left them (a step or two).
        print(
            f"# {label}: the demo job (batch 1) on {MODEL}; chats of up to {args.max_tokens} tokens for "
            f"{args.chat_seconds:.0f} s",
            flush=True,
        )
        print(f"trainer before the chats: {mean(rates[1:before]):6.1f} tokens/s ({before - 1} steps)")
        print(f"trainer during the chats: {mean(rates[before:during]):6.1f} tokens/s ({during - before} steps)")
        print(f"trainer after the chats:  {mean(rates[during + 2 :]):6.1f} tokens/s ({len(rates) - during - 2} steps)")
        print(f"chats: {output:.1f} output tokens/s ({len(answers)} answers)")
        events = client.fine_tuning.jobs.list_events(job.id, limit=500).data
        for message in reversed([e.message for e in events if "CPU thread" in e.message]):
            print(f"event: {message}")
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
