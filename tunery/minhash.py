"""Near-duplicate detection for the validation report (tunery/filescan.py): MinHash signatures of examples' word
3-grams and an LSH index that finds, for each example, the most similar earlier one.

The numbers are datasketch's (its default scheme, affine32: each value mixed with MurmurHash3's 32-bit finalizer,
then ``a * h + b`` modulo 2^32 for each permutation, the minimum kept), computed in a few numpy expressions per
batch of examples (:func:`signatures`; :func:`shingles` and :func:`signature` say it for one) in the worker that scans
them, without importing datasketch (and SciPy) in every worker; tests/tunery/test_filescan_minhash.py checks they
are its.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np

NUM_PERM = 64
_WORD = re.compile(r"\w+")
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


@lru_cache(maxsize=1)
def permutations() -> tuple[Any, Any]:
    """datasketch's ``MinHash(num_perm=NUM_PERM, seed=1).permutations`` (a and b), drawn as it draws them."""
    gen = np.random.RandomState(1)
    a = gen.randint(0, 1 << 31, NUM_PERM, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, NUM_PERM, dtype=np.uint32)
    return a, b


def shingles(text: str) -> Any:
    """The hashes of a text's word 3-grams (uint32, unique), lower-cased: what its MinHash is made of.

    Each word is hashed with CRC-32 (deterministic across processes, unlike ``hash``) and a 3-gram's hash
    combines its words' hashes.
    """
    words = _WORD.findall(text.lower())
    h = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
    if len(h) >= 3:
        h = (h[:-2] * np.uint64(0x9E3779B1) + h[1:-1] * np.uint64(0x85EBCA77) + h[2:]) & np.uint64(0xFFFFFFFF)
    return np.unique(h).astype(np.uint32)


def signature(hashes: Any) -> Any:
    """The MinHash signature of a set of shingle hashes (uint32 x NUM_PERM): datasketch's ``MinHash.update_batch``
    of them (of ``[0]`` for an empty set), its ``hashvalues`` exactly."""
    a, b = permutations()
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hashes if len(hashes) else np.zeros(1, dtype=np.uint32)
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    hv = hv ^ (hv >> s3)
    result: Any = (hv[:, None] * a + b).min(axis=0)  # uint32: the products wrap, modulo 2^32
    return result


class _WordHashes(dict[str, int]):
    """CRC-32 of words already seen (a file's words repeat, Zipf-like): a lookup is a quarter of hashing one."""

    LIMIT = 200_000  # words kept (about 25 MB); past it the cache starts again

    def __missing__(self, word: str) -> int:
        if len(self) >= self.LIMIT:
            self.clear()
        h = self[word] = zlib.crc32(word.encode())
        return h


_WORD_HASHES = _WordHashes()


def signatures(texts: list[str]) -> list[Any]:
    """``signature(shingles(text))`` of each text, number for number, computed for the whole batch at once: the word
    hashes of every text in one pass, their 3-grams within each text, the mixing and the permutations over the lot,
    and each text's minimum by ``np.minimum.reduceat``. (A minimum does not care for repeated values, so the
    3-grams need not be made unique; a text without a 3-gram is the set of its words, or ``[0]`` without words.)"""
    if not texts:
        return []
    words = [_WORD.findall(t.lower()) for t in texts]
    counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    flat = np.fromiter(
        map(_WORD_HASHES.__getitem__, chain.from_iterable(words)), dtype=np.uint64, count=int(counts.sum())
    )
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # a 3-gram at position i of the flat array belongs to a text when i + 2 stays inside it
    grams = (flat[:-2] * np.uint64(0x9E3779B1) + flat[1:-1] * np.uint64(0x85EBCA77) + flat[2:]) & np.uint64(0xFFFFFFFF)
    pieces = []
    for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
        if count >= 3:
            pieces.append(grams[start : start + count - 2])
        elif count:
            pieces.append(flat[start : start + count])
        else:
            pieces.append(np.zeros(1, dtype=np.uint64))
    sizes = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    hv = np.concatenate(pieces).astype(np.uint32)
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    hv = hv ^ (hv >> s3)
    a, b = permutations()
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    mins = np.minimum.reduceat(hv[:, None] * a + b, offsets, axis=0)  # uint32: the products wrap, modulo 2^32
    return list(mins)


class NearDuplicateIndex:
    """The examples kept so far, by the bands of their signatures that datasketch's ``MinHashLSH`` picks for the
    threshold (so the same candidates), a dict per band (datasketch's own index spent 0.3 ms an example in Python,
    the scan's serial part)."""

    def __init__(self, threshold: float):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.ranges = MinHashLSH(threshold=threshold, num_perm=NUM_PERM).hashranges
        self.bands: list[dict[bytes, list[int]]] = [{} for _ in self.ranges]
        self.kept: dict[int, Any] = {}

    def match_or_add(self, line: int, sig: Any) -> tuple[float, int] | None:
        """The most similar kept example whose estimated Jaccard similarity reaches the threshold, as (similarity,
        its line), the earliest line on a tie; None, and the example is kept, when there is none."""
        keys = [sig[start:end].tobytes() for start, end in self.ranges]
        candidates = {other for band, key in zip(self.bands, keys, strict=True) for other in band.get(key, ())}
        best: tuple[float, int] | None = None
        for other in candidates:
            j = np.count_nonzero(sig == self.kept[other]) / NUM_PERM  # datasketch's jaccard
            if j >= self.threshold and (best is None or j > best[0] or (j == best[0] and other < best[1])):
                best = (j, other)
        if best is None:
            for band, key in zip(self.bands, keys, strict=True):
                band.setdefault(key, []).append(line)
            self.kept[line] = sig
        return best
