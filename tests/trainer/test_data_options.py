"""The job's data quality options (``tunery.data``): the selection functions, then one trainer run with all three."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.test_run import REPO, SPEC_KEY, trainer_env, wait
from tests.trainer_fixtures import chat_examples, jsonl_bytes, make_spec, reporting_server
from trainer.data_options import apply_options, drop_duplicates, drop_long, mix_count, sample_mix
from tunery.jobspec import DataFile, DataOptions, MixSpec
from tunery.storage import open_store

__all__ = ["reporting_server"]  # a fixture


@dataclass
class Ex:
    input_ids: list[int]
    name: str = ""


def exs(*ids: list[int]) -> list[Ex]:
    return [Ex(list(i), name=f"e{n}") for n, i in enumerate(ids)]


def test_drop_duplicates_keeps_the_first() -> None:
    items = exs([1, 2], [3], [1, 2], [1, 2, 3], [3])
    kept, n = drop_duplicates(items)
    assert [e.name for e in kept] == ["e0", "e1", "e3"] and n == 2
    kept, n = drop_duplicates(exs([1], [2]), seen={(2,)})
    assert [e.input_ids for e in kept] == [[1]] and n == 1


def test_drop_long_drops_only_over_the_limit() -> None:
    kept, n = drop_long(exs([1] * 4, [1] * 5, [1] * 6), 5)
    assert [len(e.input_ids) for e in kept] == [4, 5] and n == 1


def test_mix_count_and_seeded_sampling() -> None:
    assert mix_count(9, 0.2) == 2  # round(2.25)
    assert mix_count(90, 0.1) == 10
    assert mix_count(40, 0.5) == 40
    with pytest.raises(ValueError):
        mix_count(10, 1.0)
    pool = exs(*([i] for i in range(100)))
    a = sample_mix(pool, 90, 0.1, seed=7)
    assert len(a) == 10 and len({e.name for e in a}) == 10  # without replacement
    assert a == sample_mix(pool, 90, 0.1, seed=7)
    assert a != sample_mix(pool, 90, 0.1, seed=8)
    assert [e.input_ids[0] for e in a] == sorted(e.input_ids[0] for e in a)  # file order
    assert sample_mix(pool[:3], 90, 0.1, seed=7) == pool[:3]  # fewer than asked: all of them


def test_apply_options_counts_and_fraction() -> None:
    train = exs([1], [2], [1], [3] * 10, [4], [5], [6], [7], [8], [9])
    pool = exs(*([100 + i] for i in range(20)), [2], [5] * 10)
    final, report = apply_options(
        train,
        drop_duplicate_examples=True,
        long_examples="drop",
        max_seq_length=8,
        mix_pool=pool,
        mix_file="file-general",
        fraction=0.25,
        seed=1,
    )
    assert (report.long_dropped, report.duplicates_dropped) == (1, 1)
    assert report.mix_pool == 20  # the long one and the duplicate of a training example are not candidates
    assert report.mixed_in == 3 and len(final) == report.train_examples == 11  # round(8 * 0.25 / 0.75)
    assert final[:8] == [train[i] for i in (0, 1, 4, 5, 6, 7, 8, 9)]
    assert report.message() == (
        "Data options: dropped 1 duplicate(s), dropped 1 example(s) over 8 tokens, "
        "mixed in 3 example(s) from file-general (27% of the training set)"
    )
    # Nothing asked for: nothing changes, truncation stays the trainer's business.
    final, report = apply_options(train, drop_duplicate_examples=False, long_examples="truncate", max_seq_length=8)
    assert final == train and report.message() == "Data options: no changes"


@pytest.mark.integration
def test_trainer_applies_all_three_options(tmp_path: Path, tiny_model_dir: Path, reporting_server: Any) -> None:
    servicer, address = reporting_server
    examples = chat_examples(9)
    examples += [examples[0], examples[3]]  # 2 exact duplicates
    examples.append(
        {"messages": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "one " * 120}]}
    )
    general = [
        {
            "messages": [
                {"role": "user", "content": f"General question {i}?"},
                {"role": "assistant", "content": f"A{i}."},
            ]
        }
        for i in range(20)
    ]
    root = tmp_path / "objects"
    store = open_store(str(root))
    store.put_bytes("files/file-train", jsonl_bytes(examples))
    mix_bytes = jsonl_bytes(general)
    store.put_bytes("files/file-general", mix_bytes)
    spec = make_spec(
        base_model_path=tiny_model_dir,
        object_store=root,
        reporting_address=address,
        n_epochs=1,
        batch_size=4,
        max_seq_length=96,
    )
    spec.data = DataOptions(
        drop_duplicates=True,
        long_examples="drop",
        mix=MixSpec(file=DataFile(file_id="file-general", key="files/file-general"), fraction=0.2),
    )
    store.put_bytes(SPEC_KEY, spec.model_dump_json().encode())
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", "--spec", f"{root.resolve().as_uri()}#{SPEC_KEY}"],
        cwd=REPO,
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = wait(proc)
    assert proc.returncode == 0, out[-5000:]

    # 12 - 2 duplicates - 1 long = 9; round(9 * 0.2 / 0.8) = 2 mixed in.
    (event,) = [e for e in servicer.of("Event") if e.message.startswith("Data options:")]
    assert event.level == "info"
    assert event.message == (
        "Data options: dropped 2 duplicate(s), dropped 1 example(s) over 96 tokens, "
        "mixed in 2 example(s) from file-general (18% of the training set)"
    )
    counts = json.loads(event.data_json)["counts"]
    assert (counts["duplicates_dropped"], counts["long_dropped"], counts["mixed_in"]) == (2, 1, 2)
    assert counts["train_examples"] == 11
    (started,) = servicer.of("Started")
    assert started.train_examples == 11
    # Dropped, not truncated: no truncation warning.
    assert not any("truncated" in e.message for e in servicer.of("Event"))

    manifest = json.loads(store.get_bytes(f"jobs/{spec.job_id}/model/tunery_manifest.json"))
    assert manifest["data_files"]["mix_file"]["sha256"] == hashlib.sha256(mix_bytes).hexdigest()
    assert manifest["data_files"]["mix_file"]["examples"] == 20
    assert manifest["data_options"]["mix"] == {"file": "file-general", "fraction": 0.2}
    assert manifest["data_options"]["counts"]["mixed_in"] == 2
