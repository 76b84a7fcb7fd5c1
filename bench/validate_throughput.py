"""How fast the control plane validates a training file: wall time, MB/s and peak RSS.

    .venv/bin/python bench/validate_throughput.py --mb 200

Generates a chat JSONL of about the given size (mixed lengths, a few duplicates) in a temporary folder, then
runs the same parse the scheduler runs after an upload (streaming, records not kept) and prints the figures.
Issue 3's target is a 1 GB file in under 60 s and under 500 MB of RSS; token statistics are not part of this yet.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from scheduler.validation import file_report
from tunery.data import parse_jsonl
from tunery.storage import CHUNK

WORDS = [
    "the",
    "a",
    "model",
    "answers",
    "every",
    "question",
    "in",
    "a",
    "short",
    "clear",
    "sentence",
    "about",
    "data",
    "training",
    "tokens",
]


def generate(path: Path, megabytes: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    target = megabytes * 1024 * 1024
    written = 0
    lines: list[bytes] = []
    with open(path, "wb") as out:
        while written < target:
            n_user = rng.choice([5, 10, 20, 40, 200])
            n_assistant = rng.choice([5, 15, 30, 80, 400])
            msgs = [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": " ".join(rng.choices(WORDS, k=n_user))},
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=n_assistant))},
            ]
            line = (json.dumps({"messages": msgs}) + "\n").encode()
            if lines and rng.random() < 0.01:
                line = rng.choice(lines)  # an exact duplicate
            elif len(lines) < 1000:
                lines.append(line)
            out.write(line)
            written += len(line)
    return written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200, help="size of the generated file in MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunery-validate-") as tmp:
        path = Path(tmp) / "train.jsonl"
        size = generate(path, args.mb)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            result = parse_jsonl(iter(lambda: f.read(CHUNK), b""), keep_records=False)
        wall = time.perf_counter() - t0
        report = file_report("bench", result, 0)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
        mb = size / 1024 / 1024
        print(f"file: {mb:.0f} MB, {report['examples']} examples, {report['duplicates']['exact']} exact duplicates")
        print(
            f"validate: {wall:.1f} s, {mb / wall:.1f} MB/s, peak RSS {rss:.0f} MiB "
            f"(before parsing {rss_before / 1024:.0f} MiB)"
        )
        print(f"1 GB at this rate: {1024 / (mb / wall):.0f} s (target: under 60 s, under 500 MB RSS)")


if __name__ == "__main__":
    main()
