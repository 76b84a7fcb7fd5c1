"""One pass over a training file: line errors, statistics, token counts, duplicates and near-duplicates.

:func:`scan_path` splits a large local file into byte ranges cut at line ends and scans them in worker
processes (one per core by default); :func:`scan_chunks` scans a stream in this process. Both give a
:class:`FileScan` with the same content, from which ``scheduler.validation`` builds the report.

Per example the scan records:

* the parse result (:mod:`tunery.data`: format, line-numbered errors);
* an exact-duplicate digest (the example as canonical JSON);
* with a model: the tokens of the example rendered with the model's chat template, the trained (assistant)
  tokens, and any special token of the model's tokenizer inside the text (:mod:`tunery.tokenizer`); a
  reinforcement example is its prompt rendered with the generation prompt (what the model answers), and has no
  trained tokens: the model is trained on the answers it samples, not on the file's tokens;
* for near-duplicates: a MinHash of its word 3-grams (``datasketch``'s numbers, computed with numpy in the worker),
  for up to ``near_dup_max_examples`` examples; candidates share a band of the signature, in the bands that
  ``datasketch``'s LSH picks for the given Jaccard threshold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from tunery.data import (
    MAX_LINE_BYTES,
    MAX_LINES,
    MAX_LISTED_ERRORS,
    ChatMessage,
    ChatRecord,
    DataFormat,
    LineError,
    PreferenceRecord,
    Record,
    ReinforcementRecord,
    load_json,
)
from tunery.data_jsonl import iter_lines, json_lines
from tunery.data_parsers import detect_format, parse_line
from tunery.minhash import NearDuplicateIndex, signatures

log = logging.getLogger("tunery.validation")

CHUNK = 1024 * 1024
BATCH = 512  # examples rendered and tokenized together
MINHASH_BATCH = 64  # examples whose MinHash signatures are computed together
PARALLEL_MIN_BYTES = 32 * 1024 * 1024  # smaller files are scanned in one process


@dataclass(frozen=True)
class ScanOptions:
    max_line_bytes: int = MAX_LINE_BYTES
    max_lines: int = MAX_LINES
    model_folder: str | None = None  # tokenizer + chat template; None: no token statistics
    model_name: str = ""
    max_seq_length: int | None = None  # examples over it are reported (and listed)
    near_dup_max_examples: int = 20_000
    near_dup_threshold: float = 0.9
    workers: int = 0  # 0: one per core
    fast_tokenizer: bool = True


@dataclass
class FileScan:
    """What one pass found (for a range: line numbers relative to the range's first line)."""

    n_lines: int = 0
    n_records: int = 0
    n_messages: int = 0
    format: DataFormat | None = None
    format_line: int | None = None  # the line that decided the format (absolute, also in a range's scan)
    errors: list[LineError] = field(default_factory=list)
    n_errors: int = 0
    trailing_blank: list[int] = field(default_factory=list)  # blank lines not (yet) followed by content
    # Per valid example (int64 arrays: compact in memory and between processes):
    lines: array[int] = field(default_factory=lambda: array("q"))  # its line
    digests: array[int] = field(default_factory=lambda: array("q"))  # exact-duplicate digest
    tokens: array[int] = field(default_factory=lambda: array("q"))  # tokens (with a model)
    trained: array[int] = field(default_factory=lambda: array("q"))  # trained tokens (with a model)
    special: list[LineError] = field(default_factory=list)
    n_special: int = 0
    minhashes: list[tuple[int, Any]] = field(default_factory=list)  # (line, MinHash of its word 3-grams)
    tokenizer: str | None = None  # "tiktoken" | "tokenizers" when tokens were counted
    token_samples: list[tuple[str, list[int]]] = field(default_factory=list)  # fast-path texts to check
    # Filled in by finish():
    n_duplicates: int = 0
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    n_near_duplicates: int = 0
    near_duplicates: list[tuple[int, int, float]] = field(default_factory=list)
    near_dup_examined: int = 0

    def add_error(self, err: LineError) -> None:
        self.n_errors += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(err)

    @property
    def kind(self) -> str | None:
        return self.format.kind if self.format else None


# ---- one range ---------------------------------------------------------------------------------------------
def _message_key(m: ChatMessage) -> str:
    extra = ""
    if m.tool_calls or m.tool_call_id is not None or m.name is not None:
        extra = json.dumps([m.tool_calls, m.tool_call_id, m.name], sort_keys=True)
    return f"{m.role}\x1f{m.weight}\x1f{m.content}\x1f{extra}"


def _digest(record: Record) -> int:
    """The exact-duplicate digest of what an example trains on: its normalized messages (roles, contents,
    weights, tool calls) and tools, and for a reinforcement example its item fields (what graders read). Two
    lines that differ only in key order, spacing or fields nothing reads are duplicates."""
    item = ""
    if isinstance(record, ChatRecord):
        messages = record.messages
        head = "chat"
    elif isinstance(record, PreferenceRecord):
        messages = [*record.prompt, record.chosen, record.rejected]
        head = "preference"
    else:
        messages = record.prompt
        head = "reinforcement"
        item = json.dumps(record.item, sort_keys=True, ensure_ascii=False)
    tools = json.dumps(record.tools, sort_keys=True) if record.tools else ""
    text = "\x1e".join([head, tools, item, *map(_message_key, messages)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


def _texts(record: Record) -> list[tuple[str, str]]:
    """(field path, text) of every message of a record, for the special-token check and near-duplicates."""
    if isinstance(record, ChatRecord):
        return [(f"messages[{i}].content", m.content) for i, m in enumerate(record.messages)]
    if isinstance(record, ReinforcementRecord):
        return [(f"messages[{i}].content", m.content) for i, m in enumerate(record.prompt)]
    out = [(f"input.messages[{i}].content", m.content) for i, m in enumerate(record.prompt)]
    out.append(("preferred_output[0].content", record.chosen.content))
    out.append(("non_preferred_output[0].content", record.rejected.content))
    return out


def _n_messages(record: Record) -> int:
    if isinstance(record, ChatRecord):
        return len(record.messages)
    if isinstance(record, PreferenceRecord):
        return len(record.prompt) + 1
    return len(record.prompt)


def _conversations(record: ChatRecord | PreferenceRecord) -> list[ChatRecord]:
    """The conversations a record is trained as: itself, or prompt + chosen and prompt + rejected."""
    if isinstance(record, ChatRecord):
        return [record]
    return [
        ChatRecord(messages=[*record.prompt, reply], line=record.line, tools=record.tools)
        for reply in (record.chosen, record.rejected)
    ]


class _Tokens:
    """Batches examples for rendering + tokenizing with the model's tokenizer."""

    def __init__(self, opts: ScanOptions, scan: FileScan):
        from tunery.chattemplate import SkeletonRenderer
        from tunery.tokenizer import load_model_tokenizer

        assert opts.model_folder is not None
        self.tok = load_model_tokenizer(opts.model_folder, opts.model_name)
        self.renderer = SkeletonRenderer(self.tok.template, self.tok.end_of_turn)
        self.fast = opts.fast_tokenizer and self.tok.fast is not None
        self.scan = scan
        scan.tokenizer = "tiktoken" if self.fast else "tokenizers"
        self.texts: list[str] = []
        self.spans: list[list[tuple[int, int]]] = []
        self.owner: list[int] = []  # index into scan.tokens of each text

    def add(self, record: Record) -> None:
        from tunery.chattemplate import ChatTemplateError

        try:
            renderings = self._render(record)
        except ChatTemplateError as e:
            raise LineError(record.line, str(e).removeprefix(f"line {record.line}: ")) from None
        except Exception as e:  # a template that raises (raise_exception) on this conversation
            raise LineError(record.line, f"the model's chat template cannot render this example: {e}") from None
        index = len(self.scan.tokens)
        self.scan.tokens.append(0)
        self.scan.trained.append(0)
        for text, spans in renderings:
            self.texts.append(text)
            self.spans.append(spans)
            self.owner.append(index)
        if len(self.texts) >= BATCH:
            self.flush()

    def _render(self, record: Record) -> list[tuple[str, list[tuple[int, int]]]]:
        """The texts an example is counted as, each with its trained character spans."""
        if isinstance(record, ReinforcementRecord):
            # The prompt the model answers, with the generation prompt; no trained span (its answers are sampled).
            return [(self.tok.template.render(record.prompt, True, record.tools), [])]
        return [self.renderer.render(conv) for conv in _conversations(record)]

    def flush(self) -> None:
        if not self.texts:
            return
        counts = self.tok.count(self.texts, self.spans, fast=self.fast)
        self.scan.token_samples += self.tok.samples
        self.tok.samples.clear()
        for owner, n, t in zip(self.owner, counts.tokens, counts.trained, strict=True):
            # A preference example is as long as its longer side; both sides' replies are trained.
            self.scan.tokens[owner] = max(self.scan.tokens[owner], n)
            self.scan.trained[owner] += t
        self.texts, self.spans, self.owner = [], [], []


def _sign(scan: FileScan, near: list[tuple[int, str]]) -> None:
    """The MinHash signatures of ``near``'s texts, computed together (tunery/minhash.py), added to the scan."""
    scan.minhashes.extend(zip((n for n, _ in near), signatures([t for _, t in near]), strict=True))
    near.clear()


def _scan_lines(
    lines: Iterator[tuple[int, bytes | None]],
    fmt: DataFormat | None,
    opts: ScanOptions,
    near_dup_quota: int,
    check_max_lines: bool = True,
    format_line: int | None = None,
) -> FileScan:
    scan = FileScan(format=fmt, format_line=format_line)
    tokens = _Tokens(opts, scan) if opts.model_folder else None
    tok = tokens.tok if tokens else None
    pending_blank: list[int] = []
    near: list[tuple[int, str]] = []  # (line, text) of the examples whose MinHash is still to be computed
    max_lines = opts.max_lines if check_max_lines else None
    for n, obj in json_lines(
        lines, scan, max_line_bytes=opts.max_line_bytes, max_lines=max_lines, trailing_blank=pending_blank
    ):
        if scan.format is None and isinstance(obj, dict):
            scan.format = detect_format(obj) or DataFormat.CHAT
            scan.format_line = n
        try:
            record = parse_line(obj, n, scan.format or DataFormat.CHAT, scan.format_line)
            if tokens is not None:
                tokens.add(record)
        except LineError as err:
            scan.add_error(err)
            continue
        scan.n_records += 1
        scan.lines.append(n)
        scan.digests.append(_digest(record))
        parts = _texts(record)
        scan.n_messages += _n_messages(record)
        if tok is not None:
            for path, content in parts:
                special = tok.special_token_in(content)
                if special:
                    scan.n_special += 1
                    if len(scan.special) < MAX_LISTED_ERRORS:
                        scan.special.append(
                            LineError(n, f"contains {special!r}, a special token of the model's tokenizer", path)
                        )
                    break
        if len(scan.minhashes) + len(near) < near_dup_quota:
            near.append((n, " ".join(t for _, t in _texts(record))))
            if len(near) >= MINHASH_BATCH:
                _sign(scan, near)
    _sign(scan, near)
    if tokens is not None:
        tokens.flush()
    scan.trailing_blank = pending_blank
    return scan


def _scan_range(
    path: str,
    start: int,
    end: int,
    fmt: DataFormat | None,
    opts: ScanOptions,
    quota: int,
    format_line: int | None = None,
) -> FileScan:
    """Scan bytes [start, end) of a file (both at line starts); line numbers are relative to the range
    (``format_line``, the line that decided ``fmt``, is the file's)."""

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    return
                left -= len(data)
                yield data

    return _scan_lines(iter_lines(chunks(), opts.max_line_bytes), fmt, opts, quota, False, format_line)


# ---- whole files -------------------------------------------------------------------------------------------
def _first_format(path: Path, max_line_bytes: int) -> tuple[DataFormat | None, int | None]:
    """The format the file's first JSON-object line decides (as the sequential parse does), and that line."""
    with open(path, "rb") as f:
        for n, raw in iter_lines(iter(lambda: f.read(CHUNK), b""), max_line_bytes):
            if raw is None or not raw.strip():
                continue
            try:
                obj = load_json(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(obj, dict):
                return detect_format(obj) or DataFormat.CHAT, n
    return None, None


def _cuts(path: Path, parts: int) -> list[tuple[int, int]]:
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(max(cuts[-1], size * i // parts))
            f.readline()  # to the start of the next line
            pos = f.tell()
            if pos >= size:
                break
            if pos > cuts[-1]:
                cuts.append(pos)
    cuts.append(size)
    return list(pairwise(cuts))


def _read(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            yield data


def scan_path(path: Path, opts: ScanOptions) -> FileScan:
    """Scan a local file, in parallel over byte ranges when it is large."""
    workers = opts.workers or os.cpu_count() or 1
    size = path.stat().st_size
    if workers <= 1 or size < PARALLEL_MIN_BYTES:
        return scan_stream(lambda: _read(path), opts)
    fmt, format_line = _first_format(path, opts.max_line_bytes)
    ranges = _cuts(path, workers)
    quota = max(1, opts.near_dup_max_examples // len(ranges))
    for fast in (opts.fast_tokenizer, False):
        run_opts = opts if fast else _slow(opts)
        with ProcessPoolExecutor(max_workers=len(ranges), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_scan_range, str(path), a, b, fmt, run_opts, quota, format_line) for a, b in ranges]
            parts = [f.result() for f in futures]
        scan = _merge(parts, fmt, format_line)
        if not fast or _fast_path_agrees(scan, opts):
            break
    return finish(scan, opts)


def _slow(opts: ScanOptions) -> ScanOptions:
    return ScanOptions(**{**opts.__dict__, "fast_tokenizer": False})


def _fast_path_agrees(scan: FileScan, opts: ScanOptions) -> bool:
    """Check the sampled tiktoken tokenizations against the model's own tokenizer (loaded here only)."""
    from tunery.tokenizer import FastPathMismatch, load_model_tokenizer

    samples, scan.token_samples = scan.token_samples, []
    if scan.tokenizer != "tiktoken" or not samples or opts.model_folder is None:
        return True
    try:
        load_model_tokenizer(opts.model_folder, opts.model_name).check_samples(samples)
    except FastPathMismatch:
        log.warning("the tiktoken fast path disagrees with the %s tokenizer: counting again", opts.model_name)
        return False
    return True


def scan_stream(open_chunks: Callable[[], Iterable[bytes]], opts: ScanOptions) -> FileScan:
    """Scan a byte stream in this process; ``open_chunks`` opens it (twice in the rare case that the tiktoken
    fast path disagrees with the model's tokenizer and the file is counted again with the latter)."""
    scan = _scan_lines(iter_lines(open_chunks(), opts.max_line_bytes), None, opts, opts.near_dup_max_examples)
    if not _fast_path_agrees(scan, opts):
        scan = _scan_lines(
            iter_lines(open_chunks(), opts.max_line_bytes), None, _slow(opts), opts.near_dup_max_examples
        )
    return finish(scan, opts)


def _merge(parts: list[FileScan], fmt: DataFormat | None, format_line: int | None = None) -> FileScan:
    out = FileScan(format=fmt, format_line=format_line)
    offset = 0
    for i, part in enumerate(parts):
        shift = offset
        if part.n_lines and out.trailing_blank:
            # Blank lines before this part's content are in the middle of the file.
            first_content = min([*part.lines[:1], *(e.line for e in part.errors), part.n_lines + 1])
            if first_content <= part.n_lines:
                for b in out.trailing_blank:
                    out.add_error(LineError(b, "blank line"))
                out.trailing_blank = []
        for err in part.errors:
            out.add_error(LineError(err.line + shift, err.message, err.field))
        out.n_errors += part.n_errors - len(part.errors)
        out.trailing_blank += [b + shift for b in part.trailing_blank]
        out.n_lines = part.n_lines + shift
        out.n_records += part.n_records
        out.n_messages += part.n_messages
        out.lines.frombytes((np.frombuffer(part.lines, dtype=np.int64) + shift).tobytes())
        out.digests += part.digests
        out.tokens += part.tokens
        out.trained += part.trained
        out.special += [LineError(e.line + shift, e.message, e.field) for e in part.special]
        out.n_special += part.n_special
        out.minhashes += [(n + shift, h) for n, h in part.minhashes]
        out.token_samples += part.token_samples
        out.tokenizer = part.tokenizer if i == 0 or part.tokenizer == "tokenizers" else out.tokenizer
        offset += part.n_lines
    out.errors.sort(key=lambda e: e.line)
    out.special = sorted(out.special, key=lambda e: e.line)[:MAX_LISTED_ERRORS]
    return out


def finish(scan: FileScan, opts: ScanOptions) -> FileScan:
    """Whole-file results: the line limit, exact and near duplicates."""
    if scan.n_lines > opts.max_lines:
        scan.add_error(LineError(opts.max_lines + 1, f"the file has more than {opts.max_lines} lines (the limit)"))
    if scan.digests:
        digests = np.asarray(scan.digests, dtype=np.int64)
        _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
        first_of = first[inverse]
        dup = np.nonzero(first_of != np.arange(len(digests)))[0]
        scan.n_duplicates = len(dup)
        scan.duplicates = [(scan.lines[i], scan.lines[int(first_of[i])]) for i in dup[:MAX_LISTED_ERRORS]]
        exact = {scan.lines[i] for i in dup}
        _near_duplicates(scan, exact, opts.near_dup_threshold)
    return scan


def _near_duplicates(scan: FileScan, exact: set[int], threshold: float) -> None:
    """Each example (not an exact duplicate) against the earlier ones kept (tunery/minhash.py's index): a near
    duplicate of the most similar one whose estimated Jaccard similarity reaches ``threshold``, else kept."""
    index = NearDuplicateIndex(threshold)
    for line, sig in scan.minhashes:
        if line in exact:
            continue
        scan.near_dup_examined += 1
        best = index.match_or_add(line, sig)
        if best is not None:
            scan.n_near_duplicates += 1
            if len(scan.near_duplicates) < MAX_LISTED_ERRORS:
                scan.near_duplicates.append((line, best[1], round(best[0], 3)))
    scan.minhashes = []  # not needed any more
