"""Streaming through the S3 object store with bounded memory: MB/s and peak RSS of a large write and read.

    .venv/bin/python bench/s3_stream_memory.py --mb 1024

Starts SeaweedFS (`weed mini`, as the tests do) in a temporary folder, then writes a generated object of the
given size through ``S3ObjectStore.put_stream`` (multipart, 8 MiB parts, SHA-256 on the way), reads it back
with ``iter_chunks``, and assembles it again from 64 MiB pieces with ``compose`` (server-side UploadPartCopy).
Each step's peak RSS is printed next to the RSS before it: what matters is that it does not grow with --mb.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.seaweedfs import run_seaweedfs

MiB = 1024 * 1024


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux


def generated(total: int, chunk: int = MiB) -> Iterator[bytes]:
    block = hashlib.sha256(b"tunery").digest() * (chunk // 32)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        sent += n
        yield block[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="object size in MiB")
    args = parser.parse_args()
    total = args.mb * MiB
    with tempfile.TemporaryDirectory() as tmp, run_seaweedfs(Path(tmp)) as weed:
        store = weed.store("bench")
        store.put_bytes("warm-up", b"x")
        print(f"object: {args.mb} MiB; RSS before: {peak_mib():.0f} MiB (peak so far)")

        t0 = time.monotonic()
        size, sha = store.put_stream("big", generated(total))
        dt = time.monotonic() - t0
        print(f"put_stream: {size / MiB / dt:.0f} MB/s, peak RSS {peak_mib():.0f} MiB")

        t0 = time.monotonic()
        digest, n = hashlib.sha256(), 0
        for chunk in store.iter_chunks("big"):
            digest.update(chunk)
            n += len(chunk)
        dt = time.monotonic() - t0
        assert n == size and digest.hexdigest() == sha
        print(f"iter_chunks: {n / MiB / dt:.0f} MB/s, peak RSS {peak_mib():.0f} MiB")

        piece = 64 * MiB
        pieces = []
        for i in range(0, total, piece):
            key = f"parts/{i // piece:05d}"
            store.put_stream(key, generated(min(piece, total - i)))
            pieces.append(key)
        t0 = time.monotonic()
        size2, _ = store.compose("composed", pieces)
        dt = time.monotonic() - t0
        assert size2 == total
        rate = size2 / MiB / dt
        print(f"compose ({len(pieces)} parts, server-side copy): {rate:.0f} MB/s, peak RSS {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
