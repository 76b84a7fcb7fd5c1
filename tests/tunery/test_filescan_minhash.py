"""The scan's MinHash (tunery/minhash.py, used by tunery/filescan.py) is datasketch's, number for number, and its
near-duplicate search finds what datasketch's MinHashLSH finds: the same pairs, the same similarities."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from tunery import filescan
from tunery.filescan import ScanOptions, scan_path
from tunery.minhash import NUM_PERM, permutations, shingles, signature, signatures


def _datasketch(shingles: list[int]) -> np.ndarray:
    m = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=lambda v: v)
    m.update_batch(shingles or [0])
    return np.asarray(m.hashvalues)


def test_the_permutations_and_signatures_are_datasketchs() -> None:
    a, b = permutations()
    ref = MinHash(num_perm=NUM_PERM, seed=1).permutations
    assert np.array_equal(a, ref[0]) and np.array_equal(b, ref[1])
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 150, 3000):
        hashes = np.unique(rng.integers(0, 2**32, n, dtype=np.uint64)).astype(np.uint32)
        ours = signature(hashes)
        assert ours.dtype == np.uint32 and ours.shape == (NUM_PERM,)
        assert np.array_equal(ours.astype(np.uint64), _datasketch(hashes.tolist())), n


def test_a_batch_is_signed_as_each_of_its_texts_alone() -> None:
    """The scan signs its examples in batches (signatures): the same numbers as one text at a time, for texts of no
    word, one, two (no 3-gram: the words themselves) and many, repeated 3-grams and non-ASCII words included."""
    rng = random.Random(3)
    words = [f"w{i}" for i in range(50)] + ["Été", "naïve", "ß", "日本語"]
    texts = ["", "   ", "one", "two words", "a a a a a a", "Été ÉTÉ été"]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(0, 120))) for _ in range(300)]
    batch = signatures(texts)
    assert len(batch) == len(texts) and signatures([]) == []
    for text, got in zip(texts, batch, strict=True):
        assert got.dtype == np.uint32 and np.array_equal(got, signature(shingles(text))), text
    assert np.array_equal(signatures(texts[7:9])[1], batch[8])  # whatever else is in the batch


def _lines(n: int, seed: int) -> list[str]:
    """Chat lines with near duplicates: some copy an earlier answer with a word or two changed."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)]
    answers: list[str] = []
    out = []
    for i in range(n):
        if answers and rng.random() < 0.3:
            base = rng.choice(answers).split()
            for _ in range(rng.randint(0, 2)):
                base[rng.randrange(len(base))] = rng.choice(words)
            answer = " ".join(base)
        else:
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(30, 60)))
        answers.append(answer)
        msgs = [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": answer}]
        out.append(json.dumps({"messages": msgs}))
    return out


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_near_duplicates_are_those_of_datasketchs_index(tmp_path: Path, threshold: float) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(_lines(400, seed=7)) + "\n")
    scan = scan_path(path, ScanOptions(near_dup_threshold=threshold, workers=1))
    assert scan.n_near_duplicates > 10  # the file has them

    # The same search with datasketch's index over the scan's own shingles, as the scan did before.
    records = [json.loads(line) for line in path.read_text().splitlines()]
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    indexed: dict[int, LeanMinHash] = {}
    found = []
    for line, obj in enumerate(records, start=1):
        record = filescan.parse_line(obj, line, filescan.DataFormat.CHAT)
        m = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=lambda v: v)
        text = " ".join(t for _, t in filescan._texts(record))
        m.update_batch(shingles(text).tolist() or [0])
        lean = LeanMinHash(m)
        best = None
        for other in lsh.query(lean):
            j = float(lean.jaccard(indexed[other]))
            if j >= threshold and (best is None or j > best[0] or (j == best[0] and other < best[1])):
                best = (j, other)
        if best is not None:
            found.append((line, best[1], round(best[0], 3)))
            continue
        lsh.insert(line, lean)
        indexed[line] = lean
    assert scan.near_duplicates == found[: len(scan.near_duplicates)] and scan.n_near_duplicates == len(found)
