"""How fast the control plane validates a training file, against TRL's own dataset preparation.

    .venv/bin/python bench/validate_throughput.py --mb 1024 --trl-mb 100

1. Generates a chat JSONL of about ``--mb`` MB (seeded; a system prompt, one or two user/assistant exchanges of
   mixed lengths, words drawn Zipf-like from the tokenizer's 33k-word vocabulary, 1% exact duplicates).
2. Validates it as the scheduler does for a job on the demo model (SmolLM2-135M-Instruct): every line parsed
   and checked, the chat template rendered, tokens and trained tokens counted, special tokens, over-length
   examples, exact duplicates, MinHash near-duplicates. Prints wall time, MB/s and the peak RSS of all the
   processes involved (sampled every 50 ms and summed over the scan's worker processes).
3. Does the same work on the first ``--trl-mb`` MB with TRL: ``datasets.load_dataset("json")`` and
   ``SFTTrainer._prepare_dataset`` (chat template + tokenization through ``datasets.map``, labels, truncation),
   with ``dataset_num_proc`` = the same number of processes, and Tunery's validation of that same slice. Prints
   both rates and their ratio.

Issue 3's targets on the 2-core machine: 1 GB in under 60 s and under 500 MB RSS; at least 5x TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunery.filescan import ScanOptions, scan_path
from tunery.settings import Settings


def generate(path: Path, megabytes: int, model: Path, seed: int = 0) -> int:
    import numpy as np
    from tokenizers import Tokenizer

    vocab = sorted(
        w[1:] for w in Tokenizer.from_file(str(model / "tokenizer.json")).get_vocab() if re.fullmatch(r"Ġ[a-z]{2,}", w)
    )
    rng = random.Random(seed)
    rng.shuffle(vocab)
    words = np.array(vocab, dtype=object)
    weights = 1 / np.arange(1, len(vocab) + 1)
    nrng = np.random.default_rng(seed)
    pool = iter(())

    def text(k: int) -> str:
        nonlocal pool
        out: list[str] = []
        for _ in range(k):
            try:
                out.append(next(pool))
            except StopIteration:
                pool = iter(words[nrng.choice(len(words), size=1_000_000, p=weights / weights.sum())].tolist())
                out.append(next(pool))
        return " ".join(out).capitalize() + "."

    target = megabytes * 1024 * 1024
    written = 0
    kept: list[bytes] = []
    with open(path, "wb") as out:
        while written < target:
            msgs = [{"role": "system", "content": "You are a helpful assistant."}]
            for _ in range(rng.choice([1, 1, 2])):
                msgs.append({"role": "user", "content": text(rng.choice([5, 10, 20, 40, 200]))})
                msgs.append({"role": "assistant", "content": text(rng.choice([5, 15, 30, 80, 400]))})
            line = (json.dumps({"messages": msgs}) + "\n").encode()
            if kept and rng.random() < 0.01:
                line = rng.choice(kept)
            elif len(kept) < 1000:
                kept.append(line)
            out.write(line)
            written += len(line)
    return written


class RssSampler:
    """Peak of the summed RSS of this process and its descendants."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree(pid: int) -> list[int]:
        out = [pid]
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                for child in task.read_text().split():
                    out += RssSampler._tree(int(child))
            except OSError:
                pass
        return out

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in self._tree(os.getpid())))
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tunery_validate(path: Path, model: Path, workers: int) -> tuple[float, int, dict[str, Any]]:
    opts = ScanOptions(model_folder=str(model), model_name="demo", max_seq_length=1024, workers=workers)
    with RssSampler() as rss:
        t0 = time.perf_counter()
        scan = scan_path(path, opts)
        wall = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "examples": scan.n_records,
        "tokens": sum(scan.tokens),
        "trained": sum(scan.trained),
        "tokenizer": scan.tokenizer,
        "exact_dups": scan.n_duplicates,
        "near_dups": scan.n_near_duplicates,
        "near_examined": scan.near_dup_examined,
    }
    return wall, rss.peak, summary


def trl_prepare(path: Path, model: Path, workers: int, cache: Path) -> tuple[float, int, int]:
    """TRL's preparation of the same file: load through datasets, then SFTTrainer._prepare_dataset."""
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    from types import SimpleNamespace

    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    args = SFTConfig(
        output_dir=str(cache / "out"),
        max_length=1024,
        dataset_num_proc=workers if workers > 1 else None,
        use_cpu=True,
        bf16=False,
    )
    trainer_like = SimpleNamespace(chat_template=None, completion_only_loss=False)
    with RssSampler() as rss:
        t0 = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
        ds = SFTTrainer._prepare_dataset(trainer_like, ds, tokenizer, args, False, None, "train")  # type: ignore[arg-type]
        wall = time.perf_counter() - t0
    import pyarrow.compute as pc

    tokens = int(pc.sum(pc.list_value_length(ds.data.column("input_ids"))).as_py())  # counted after the clock
    return wall, rss.peak, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1024, help="size of the generated file in MB")
    parser.add_argument(
        "--trl-mb", type=int, default=100, help="size of the slice TRL prepares (0: skip; -1: the whole file)"
    )
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this file instead of a temporary one")
    args = parser.parse_args()
    model = Settings().demo_model_dir
    if not (model / "tokenizer.json").is_file():
        sys.exit(f"the demo model is not prepared in {model}: run `tunery models prepare`")
    workers = args.workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tunery-validate-") as tmp:
        path = args.keep or Path(tmp) / "train.jsonl"
        if not path.is_file():
            t0 = time.perf_counter()
            generate(path, args.mb, model)
            print(f"generated {path} in {time.perf_counter() - t0:.0f} s")
        size = path.stat().st_size / 1e6
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {workers} worker process(es)")
        wall, peak, summary = tunery_validate(path, model, workers)
        print(
            f"tunery: {size:.0f} MB in {wall:.1f} s = {size / wall:.1f} MB/s, "
            f"peak RSS {peak / 2**20:.0f} MiB; {summary}"
        )
        if size >= 1000:
            met = wall < 60 and peak < 500e6
            print(f"targets: under 60 s and under 500 MB RSS for 1 GB -> {'met' if met else 'NOT met'}")
        else:
            print(f"1 GB at this rate: {1000 / (size / wall):.0f} s")
        if args.trl_mb < 0:
            r_wall, r_peak, r_tokens = trl_prepare(path, model, workers, Path(tmp) / "hf")
            print(
                f"TRL: {size:.0f} MB in {r_wall:.1f} s ({size / r_wall:.1f} MB/s, {r_peak / 2**20:.0f} MiB), "
                f"{r_tokens} tokens"
            )
            print(
                f"ratio: tunery is {r_wall / wall:.1f}x faster than TRL's preparation on the same file (target >= 5x)"
            )
        elif args.trl_mb:
            part = Path(tmp) / "slice.jsonl"
            with open(path, "rb") as src, open(part, "wb") as dst:
                limit = args.trl_mb * 1024 * 1024
                for line in src:
                    if dst.tell() + len(line) > limit:
                        break
                    dst.write(line)
            psize = part.stat().st_size / 1e6
            t_wall, t_peak, _ = tunery_validate(part, model, workers)
            r_wall, r_peak, r_tokens = trl_prepare(part, model, workers, Path(tmp) / "hf")
            print(f"slice {psize:.0f} MB: tunery {t_wall:.1f} s ({psize / t_wall:.1f} MB/s, {t_peak / 2**20:.0f} MiB)")
            print(
                f"slice {psize:.0f} MB: TRL    {r_wall:.1f} s ({psize / r_wall:.1f} MB/s, {r_peak / 2**20:.0f} MiB), "
                f"{r_tokens} tokens"
            )
            print(f"ratio: tunery is {r_wall / t_wall:.1f}x faster than TRL's preparation (target >= 5x)")


if __name__ == "__main__":
    main()
