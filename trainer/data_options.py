"""The job's data quality options (``tunery.data``), applied to the tokenized training set.

Pure functions on token-id lists, so they are tested without a model:

* ``drop_duplicates``: an example whose token ids equal an earlier example's is dropped (the first is kept);
* ``long_examples="drop"``: an example longer than ``max_seq_length`` tokens is dropped instead of truncated;
* ``mix``: ``round(n_train * fraction / (1 - fraction))`` examples of a general-purpose file, sampled without
  replacement with the job's seed (all of them when the file has fewer), are added, so that they make up
  ``fraction`` of the final training set.

The validation set is never changed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tunery.jobspec import mix_count

__all__ = ["DataOptionsReport", "apply_options", "drop_duplicates", "drop_long", "mix_count", "sample_mix"]


class HasIds(Protocol):
    @property
    def input_ids(self) -> list[int]: ...


T = TypeVar("T", bound=HasIds)


def drop_duplicates(examples: Sequence[T], seen: set[tuple[int, ...]] | None = None) -> tuple[list[T], int]:
    """The examples without those whose token ids equal an earlier one's (or one in ``seen``), and the count
    dropped. ``seen`` is updated with the ids kept."""
    seen = set() if seen is None else seen
    kept: list[T] = []
    for example in examples:
        key = tuple(example.input_ids)
        if key in seen:
            continue
        seen.add(key)
        kept.append(example)
    return kept, len(examples) - len(kept)


def drop_long(examples: Sequence[T], max_length: int) -> tuple[list[T], int]:
    """The examples of at most ``max_length`` tokens, and the count dropped."""
    kept = [e for e in examples if len(e.input_ids) <= max_length]
    return kept, len(examples) - len(kept)


def sample_mix(pool: Sequence[T], n_train: int, fraction: float, seed: int) -> list[T]:
    """``mix_count`` examples of ``pool`` without replacement (all of them if it has fewer), seeded; in file order."""
    k = min(mix_count(n_train, fraction), len(pool))
    chosen = sorted(random.Random(seed).sample(range(len(pool)), k))
    return [pool[i] for i in chosen]


@dataclass
class DataOptionsReport:
    """What the options did: the counts for the job's event and the checkpoint manifest."""

    drop_duplicates: bool
    long_examples: str
    max_seq_length: int
    mix_file: str | None = None
    mix_fraction: float | None = None
    train_examples_before: int = 0
    duplicates_dropped: int = 0
    long_dropped: int = 0
    mixed_in: int = 0
    mix_pool: int = 0  # usable examples in the mix file
    train_examples: int = 0  # the final training set

    def message(self) -> str:
        parts = []
        if self.drop_duplicates:
            parts.append(f"dropped {self.duplicates_dropped} duplicate(s)")
        if self.long_examples == "drop":
            parts.append(f"dropped {self.long_dropped} example(s) over {self.max_seq_length} tokens")
        if self.mix_file is not None:
            share = self.mixed_in / self.train_examples if self.train_examples else 0.0
            parts.append(f"mixed in {self.mixed_in} example(s) from {self.mix_file} ({share:.0%} of the training set)")
        if not parts:
            parts.append("no changes")
        return "Data options: " + ", ".join(parts)

    def data(self) -> dict[str, Any]:
        return {
            "drop_duplicates": self.drop_duplicates,
            "long_examples": self.long_examples,
            "max_seq_length": self.max_seq_length,
            "mix": {"file": self.mix_file, "fraction": self.mix_fraction} if self.mix_file else None,
            "counts": {
                "train_examples_before": self.train_examples_before,
                "duplicates_dropped": self.duplicates_dropped,
                "long_dropped": self.long_dropped,
                "mix_pool": self.mix_pool,
                "mixed_in": self.mixed_in,
                "train_examples": self.train_examples,
            },
        }


def apply_options(
    train: Sequence[T],
    *,
    drop_duplicate_examples: bool,
    long_examples: str,
    max_seq_length: int,
    mix_pool: Sequence[T] | None = None,
    mix_file: str | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> tuple[list[T], DataOptionsReport]:
    """The final training set and what was done. Long examples are dropped first, then duplicates; the mix
    pool gets the same treatment (and loses examples that duplicate the kept training set) before sampling."""
    report = DataOptionsReport(
        drop_duplicates=drop_duplicate_examples,
        long_examples=long_examples,
        max_seq_length=max_seq_length,
        mix_file=mix_file if mix_pool is not None else None,
        mix_fraction=fraction if mix_pool is not None else None,
        train_examples_before=len(train),
    )
    kept = list(train)
    if long_examples == "drop":
        kept, report.long_dropped = drop_long(kept, max_seq_length)
    seen: set[tuple[int, ...]] = set()
    if drop_duplicate_examples:
        kept, report.duplicates_dropped = drop_duplicates(kept, seen)
    mixed: list[T] = []
    if mix_pool is not None and fraction is not None:
        pool = list(mix_pool)
        if long_examples == "drop":
            pool, _ = drop_long(pool, max_seq_length)
        if drop_duplicate_examples:
            pool, _ = drop_duplicates(pool, seen)
        report.mix_pool = len(pool)
        mixed = sample_mix(pool, len(kept), fraction, seed)
    report.mixed_in = len(mixed)
    final = kept + mixed
    report.train_examples = len(final)
    return final, report
