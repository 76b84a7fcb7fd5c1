"""Line-length and line-count limits of training files: clear line errors, and bounded memory."""

from __future__ import annotations

import random
import tracemalloc

from tests.conftest import TINY, chat_lines
from tunery.data_jsonl import iter_lines, parse_jsonl


def test_iter_lines_matches_split_at_any_chunking():
    rng = random.Random(3)
    data = b"".join(rng.choice([b"a", b"bb", b"\n", b"ccc\n", b"\n\n"]) for _ in range(2000))
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    for size in (1, 2, 3, 7, 64, 1 << 20):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert [raw for _, raw in iter_lines(chunks)] == expected
        assert [n for n, _ in iter_lines(chunks)] == list(range(1, len(expected) + 1))


def test_long_line_is_an_error_and_parsing_goes_on():
    good = chat_lines(12).splitlines()
    lines = [*good[:3], b'{"messages": "' + b"x" * 5000 + b'"}', *good[3:]]
    data = b"\n".join(lines) + b"\n"
    for size in (100, 4096, 1 << 20):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        result = parse_jsonl(chunks, max_line_bytes=1000)
        assert [(e.line, e.message) for e in result.errors] == [(4, "line is longer than 1000 bytes (the limit)")]
        assert result.n_records == 12 and result.n_lines == 13


def test_a_file_without_newlines_never_fills_memory():
    limit = 1 << 20

    def endless():  # 200 MB of one line, produced on the fly
        block = b"y" * (1 << 20)
        for _ in range(200):
            yield block

    tracemalloc.start()
    result = parse_jsonl(endless(), max_line_bytes=limit)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [e.line for e in result.errors] == [1]
    assert peak < 6 * limit, f"peak {peak} bytes"


def test_too_many_lines():
    result = parse_jsonl([chat_lines(30)], max_lines=20)
    assert result.errors[-1].line == 21 and "more than 20 lines" in result.errors[-1].message


def test_limits_apply_to_jobs(tiny_server_factory):
    srv = tiny_server_factory(max_line_bytes=2000, max_lines=1000)
    lines = chat_lines(12).splitlines()
    lines.insert(6, b'{"messages": [{"role": "user", "content": "' + b"z" * 3000 + b'"}]}')
    f = srv.client.files.create(file=("t.jsonl", b"\n".join(lines) + b"\n"), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
    job = srv.wait_job(job.id, {"failed"}, timeout=30)
    assert job.error.code == "invalid_training_file"
    assert "line 7" in job.error.message and "longer than 2000 bytes" in job.error.message
