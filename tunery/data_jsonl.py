"""Reading JSONL training files: lines from a byte stream, the rules every line follows, the parsed file.

:func:`iter_lines` and :func:`json_lines` are shared by the parser and the validation scan
(:mod:`tunery.filescan`); :func:`parse_jsonl` reads a whole file into a :class:`~tunery.data.ParseResult`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from tunery.data import MAX_LINE_BYTES, MAX_LINES, DataFormat, LineError, ParseResult, load_json
from tunery.data_parsers import detect_format, parse_line


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, raw line) from a byte stream, without holding the whole file.

    A line longer than ``max_line_bytes`` comes out as ``None`` and its bytes are dropped as they arrive, so
    even a file with no newline at all never takes more than about ``max_line_bytes`` of memory.
    """
    buf = b""
    oversize = False
    n = 0
    for chunk in chunks:
        parts = chunk.split(b"\n")
        for i, part in enumerate(parts[:-1]):  # complete lines; the first one continues the buffer
            n += 1
            if i == 0:
                line = None if oversize else buf + part
                buf, oversize = b"", False
            else:
                line = part
            yield n, line if line is not None and len(line) <= max_line_bytes else None
        if not oversize:
            buf += parts[-1]
            if len(buf) > max_line_bytes:
                buf, oversize = b"", True
    if oversize:
        yield n + 1, None
    elif buf:
        yield n + 1, buf


class LineSink(Protocol):
    """Where :func:`json_lines` reports: a parse result or a file scan."""

    n_lines: int

    def add_error(self, err: LineError) -> None: ...


def json_lines(
    lines: Iterable[tuple[int, bytes | None]],
    sink: LineSink,
    *,
    max_line_bytes: int,
    max_lines: int | None,
    trailing_blank: list[int] | None = None,
) -> Iterator[tuple[int, Any]]:
    """The JSON value of each line of ``lines`` (from :func:`iter_lines`), with its number. The line rules shared
    by the parser and the validation scan: a line past ``max_lines`` (reading stops there), longer than
    ``max_line_bytes``, blank with a line after it, not UTF-8 or not JSON is reported to ``sink.add_error``;
    ``sink.n_lines`` follows the lines read. Blank lines still pending at the end (trailing blank lines are no
    error) are left in ``trailing_blank``."""
    pending = trailing_blank if trailing_blank is not None else []
    for n, raw in lines:
        if max_lines is not None and n > max_lines:
            sink.add_error(LineError(n, f"the file has more than {max_lines} lines (the limit)"))
            break
        sink.n_lines = n
        if raw is None:
            for b in pending:
                sink.add_error(LineError(b, "blank line"))
            pending.clear()
            sink.add_error(LineError(n, f"line is longer than {max_line_bytes} bytes (the limit)"))
            continue
        if not raw.strip():
            pending.append(n)
            continue
        for b in pending:
            sink.add_error(LineError(b, "blank line"))
        pending.clear()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            sink.add_error(LineError(n, "line is not valid UTF-8"))
            continue
        try:
            obj = load_json(text)
        except json.JSONDecodeError as e:
            sink.add_error(LineError(n, f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        yield n, obj


def parse_jsonl(
    chunks: Iterable[bytes],
    keep_records: bool = True,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_lines: int = MAX_LINES,
) -> ParseResult:
    """Parse a JSONL training file in any supported format, streaming.

    Blank lines at the end are ignored; elsewhere they are errors. With ``keep_records=False`` only the count
    of valid examples is kept (``n_records``).
    """
    result = ParseResult()
    lines = iter_lines(chunks, max_line_bytes)
    for n, obj in json_lines(lines, result, max_line_bytes=max_line_bytes, max_lines=max_lines):
        if result.format is None and isinstance(obj, dict):
            seen = detect_format(obj)
            # A line that looks like no format is read as chat, OpenAI's own format ("missing 'messages'").
            result.format = seen or DataFormat.CHAT
            result.format_line = n
        try:
            record = parse_line(obj, n, result.format or DataFormat.CHAT, result.format_line)
        except LineError as err:
            result.add_error(err)
            continue
        result.n_records += 1
        result.note_example(obj, n)
        if keep_records:
            result.records.append(record)
    return result


def parse_chat_jsonl(chunks: Iterable[bytes], keep_records: bool = True) -> ParseResult:
    """Kept for callers of the chat-only parser: every format is accepted (see :func:`parse_jsonl`)."""
    return parse_jsonl(chunks, keep_records)
