"""Per-call overhead of the python grader's sandbox (tunery/sandbox.py): one sandbox per sample, against one sandbox
for a batch of samples, for a trivial grader and one that imports numpy.

    PYTHONPATH=. .venv/bin/python bench/python_grader_overhead.py [samples]
"""

from __future__ import annotations

import statistics
import sys
import time

from tunery import sandbox

TRIVIAL = "def grade(sample, item):\n    return float(sample['output_text'] == item['label'])\n"
NUMPY = "import numpy as np\n\ndef grade(sample, item):\n    return float(np.mean([len(sample['output_text']), 1]))\n"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    missing = sandbox.unavailable()
    if missing:
        sys.exit(f"no sandbox here: {missing}")
    pairs = [({"output_text": f"answer {i}"}, {"label": "answer 3"}) for i in range(n)]
    for name, source in (("trivial", TRIVIAL), ("numpy", NUMPY)):
        one = []
        for sample, item in pairs:
            started = time.perf_counter()
            assert sandbox.run_python(source, sample, item).reward is not None
            one.append(time.perf_counter() - started)
        started = time.perf_counter()
        out = sandbox.run_python_batch(source, pairs)
        batch = time.perf_counter() - started
        assert all(o.reward is not None for o in out)
        print(
            f"{name:8} one sandbox per sample: median {statistics.median(one) * 1000:.1f} ms, "
            f"p90 {sorted(one)[int(0.9 * n)] * 1000:.1f} ms; one sandbox for {n}: {batch * 1000:.1f} ms "
            f"({batch / n * 1000:.2f} ms a sample)"
        )


if __name__ == "__main__":
    main()
