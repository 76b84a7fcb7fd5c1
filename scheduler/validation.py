"""File validation before a job is queued: line-numbered errors, format/method fit and the example count."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunery import filescan, hyperparams
from tunery.data import MAX_LINE_BYTES, MAX_LINES, MAX_LISTED_ERRORS, MIN_EXAMPLES, DataFormat
from tunery.filescan import FileScan, ScanOptions, scan_path, scan_stream
from tunery.jobstate import EVAL_FILE_PARAM, MIX_PARAM, REFERENCE_PARAM, ErrorCode, JobError, file_error_code
from tunery.storage import ObjectNotFound, ObjectStore

SHOWN_ERRORS = 5
_LABELS = {
    "training_file": "training file",
    "validation_file": "validation file",
    MIX_PARAM: "mix file",
    REFERENCE_PARAM: "reference file",
    EVAL_FILE_PARAM: "evaluation file",
}
# The training method each kind of file feeds (`method.type` of a job).
METHOD_FOR_KIND = {"supervised": "supervised", "preference": "dpo", "reinforcement": "reinforcement"}


@dataclass
class FileCheck:
    n_examples: int
    error: JobError | None  # the job's error when the file can't be used
    format: DataFormat | None = None
    line: int | None = None  # the first invalid line, when the error is about lines
    field: str | None = None  # its field path, when known
    n_duplicates: int = 0
    scan: FileScan | None = None  # what the scan found, when the file is usable

    def summary(self, file_id: str, param: str) -> str:
        """One line for the job's events."""
        fmt = f" in the {self.format.value} format" if self.format else ""
        dup = f", {self.n_duplicates} exact duplicate(s)" if self.n_duplicates else ""
        return f"{_label(param).capitalize()} {file_id}: {self.n_examples} example(s){fmt}{dup}"


def _label(param: str) -> str:
    return _LABELS.get(param, param.replace("_", " "))


_code = file_error_code


def check_method_fit(
    fmt: DataFormat | None, file_id: str, method: str, param: str = "training_file"
) -> JobError | None:
    """The job error when a file's format does not fit the job's training method (None when it fits).

    Worded like OpenAI's: "Input file file-… is in the fine-tune-chat format, but the specified fine-tuning job
    is not using 'supervised' as the training method (provided method=dpo)."
    """
    if fmt is None:
        return None
    wanted = METHOD_FOR_KIND[fmt.kind]
    if wanted == method:
        return None
    return JobError(
        _code(param),
        f"Input file {file_id} is in the {fmt.label} format, but the specified fine-tuning job is not "
        f"using '{wanted}' as the training method (provided method={method}).",
        param,
    )


def check_scan(scan: FileScan, file_id: str, param: str, method: str = "supervised") -> FileCheck:
    """The job's verdict on a scanned file: line errors (special tokens included), method fit, the example count."""
    n = scan.n_records
    if scan.n_errors or scan.n_special:
        errors = sorted(scan.errors + scan.special, key=lambda e: e.line)
        total = scan.n_errors + scan.n_special
        shown = "; ".join(str(e) for e in errors[:SHOWN_ERRORS])
        more = f" (and {total - SHOWN_ERRORS} more)" if total > SHOWN_ERRORS else ""
        first = errors[0]
        return FileCheck(
            n,
            JobError(
                _code(param),
                f"The job failed due to an invalid {_label(param)} ({file_id}). "
                f"Invalid file format: {total} invalid line(s): {shown}{more}.",
                param,
            ),
            scan.format,
            first.line,
            first.field,
        )
    fit = check_method_fit(scan.format, file_id, method, param)
    if fit:
        return FileCheck(n, fit, scan.format)
    if param == "training_file" and n < MIN_EXAMPLES:
        return FileCheck(
            n,
            JobError(
                ErrorCode.invalid_n_examples,
                f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples",
                param,
            ),
            scan.format,
        )
    if n == 0:
        return FileCheck(
            n,
            JobError(_code(param), f"{_label(param).capitalize()} has no examples", param),
            scan.format,
        )
    return FileCheck(n, None, scan.format, n_duplicates=scan.n_duplicates, scan=scan)


def check_chunks(
    chunks: Iterable[bytes],
    file_id: str,
    param: str,
    method: str = "supervised",
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_lines: int = MAX_LINES,
) -> FileCheck:
    """Validate a file's bytes (read once, no model) for a job of training method `method`."""
    data = list(chunks) if not isinstance(chunks, list) else chunks
    opts = ScanOptions(max_line_bytes=max_line_bytes, max_lines=max_lines, near_dup_max_examples=0)
    return check_scan(scan_stream(lambda: iter(data), opts), file_id, param, method)


def scan_stored(store: ObjectStore, key: str, opts: ScanOptions) -> FileScan:
    """Scan a stored file: in parallel from its local path when the store has one, else streamed."""
    local_path = getattr(store, "local_path", None)
    if local_path is not None:
        path = local_path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return scan_path(path, opts)
    if opts.workers != 1 and store.size(key) >= filescan.PARALLEL_MIN_BYTES:
        # A large file in a remote store: a local copy lets the worker processes read their parts in parallel.
        with tempfile.TemporaryDirectory(prefix="tunery-scan-") as tmp:
            path = Path(tmp) / "file.jsonl"
            store.get_file(key, path)
            return scan_path(path, opts)
    return scan_stream(lambda: store.iter_chunks(key), opts)


def check_file(
    store: ObjectStore,
    key: str,
    file_id: str,
    param: str,
    method: str = "supervised",
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_lines: int = MAX_LINES,
    opts: ScanOptions | None = None,
) -> FileCheck:
    opts = opts or ScanOptions(max_line_bytes=max_line_bytes, max_lines=max_lines)
    return check_scan(scan_stored(store, key, opts), file_id, param, method)


REPORT_OBJECT = "file.validation"


def _stats(values: Sequence[int]) -> dict[str, float | int]:
    arr = np.asarray(values, dtype=np.int64)
    p50, p95 = np.percentile(arr, [50, 95])
    return {
        "min": int(arr.min()),
        "mean": round(float(arr.mean()), 1),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "max": int(arr.max()),
    }


HISTOGRAM_BINS = 20


def histogram(values: Sequence[int], bins: int = HISTOGRAM_BINS) -> dict[str, list[int]]:
    """Examples per range of token counts (the dashboard draws it): ``counts[i]`` examples have at least ``edges[i]``
    and fewer than ``edges[i + 1]`` tokens. At most ``bins`` ranges of equal whole widths, from the min to the max."""
    arr = np.asarray(values, dtype=np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    width = max(1, -(-(hi - lo + 1) // bins))  # ceil: whole tokens per range
    edges = [*range(lo, hi + 1, width), hi + 1]
    counts, _ = np.histogram(arr, bins=np.asarray(edges, dtype=np.float64) - 0.5)
    return {"edges": edges, "counts": [int(c) for c in counts]}


def token_report(scan: FileScan, model: str, max_seq_length: int | None) -> dict[str, Any] | None:
    """Token statistics of a scanned file. A reinforcement file's tokens are its prompts (rendered with the
    generation prompt) and none is trained (``trained`` 0, ``prompt_only`` true): the model is trained on the
    answers it samples."""
    if scan.tokenizer is None or not scan.tokens:
        return None
    out: dict[str, Any] = {
        "model": model,
        "tokenizer": scan.tokenizer,
        "total": int(sum(scan.tokens)),
        "trained": int(sum(scan.trained)),
        "per_example": _stats(scan.tokens),
        "trained_per_example": _stats(scan.trained),
        "histogram": histogram(scan.tokens),
        "no_trained_tokens": sum(1 for t in scan.trained if t == 0),
    }
    if scan.kind == "reinforcement":
        out["prompt_only"] = True
    if max_seq_length:
        over = [line for line, n in zip(scan.lines, scan.tokens, strict=True) if n > max_seq_length]
        out["max_seq_length"] = max_seq_length
        out["over_max_seq_length"] = {"total": len(over), "lines": over[:MAX_LISTED_ERRORS]}
        out["total_within_max_seq_length"] = hyperparams.tokens_within(scan.tokens, max_seq_length)
    return out


def file_report(
    file_id: str,
    scan: FileScan,
    created_at: int,
    *,
    model: str | None = None,
    max_seq_length: int | None = None,
    for_job: bool = False,
) -> dict[str, Any]:
    """The validation report of a training file (``GET /v1/files/{id}/validation``).

    At upload (``for_job=False``) a special token of the reference model's tokenizer is a warning, since the
    file may be meant for another model; for a job it is an error of the job's model.
    """
    special_errors = for_job and scan.n_special
    status = "error" if scan.n_errors or not scan.n_records or special_errors else "processed"
    warnings = []
    if status == "processed" and scan.n_records < MIN_EXAMPLES:
        warnings.append(f"The file has {scan.n_records} example(s); a fine-tuning job needs at least {MIN_EXAMPLES}.")
    if scan.n_duplicates:
        warnings.append(f"{scan.n_duplicates} example(s) repeat an earlier example exactly.")
    if scan.n_near_duplicates:
        warnings.append(f"{scan.n_near_duplicates} example(s) are near-duplicates of an earlier example.")
    if scan.n_special and not for_job:
        warnings.append(
            f"{scan.n_special} example(s) contain a special token of the {model} tokenizer in their text "
            "(an error when a job trains this model)."
        )
    tokens = token_report(scan, model, max_seq_length) if model else None
    if tokens and tokens.get("over_max_seq_length", {}).get("total"):
        warnings.append(
            f"{tokens['over_max_seq_length']['total']} example(s) are longer than max_seq_length="
            f"{max_seq_length} tokens: they are truncated, or dropped with the long_examples data option."
        )
    if tokens and tokens["no_trained_tokens"] and not tokens.get("prompt_only"):
        warnings.append(f"{tokens['no_trained_tokens']} example(s) have no assistant token to train on.")
    errors = sorted(scan.errors + (scan.special if special_errors else []), key=lambda e: e.line)
    return {
        "object": REPORT_OBJECT,
        "file_id": file_id,
        "status": status,
        "created_at": created_at,
        "model": model,
        "format": scan.format.value if scan.format else None,
        "kind": scan.kind,
        "lines": scan.n_lines,
        "examples": scan.n_records,
        "messages": scan.n_messages,
        "tokens": tokens,
        "errors": {
            "total": scan.n_errors + (scan.n_special if special_errors else 0),
            "listed": [{"line": e.line, "field": e.field, "message": e.message} for e in errors[:MAX_LISTED_ERRORS]],
        },
        "special_tokens": {
            "total": scan.n_special,
            "listed": [{"line": e.line, "field": e.field, "message": e.message} for e in scan.special],
        },
        "duplicates": {
            "exact": scan.n_duplicates,
            "listed": [{"line": line, "duplicate_of": first} for line, first in scan.duplicates],
            "near": scan.n_near_duplicates,
            "near_examined": scan.near_dup_examined,
            "near_listed": [
                {"line": line, "similar_to": other, "jaccard": j} for line, other, j in scan.near_duplicates
            ],
        },
        "warnings": warnings,
    }


def status_details(report: dict[str, Any]) -> str:
    """One line for the File object's ``status_details``."""
    errors = report["errors"]
    if report["status"] == "error":
        if not errors["total"]:
            return "The file has no examples."
        first = errors["listed"][0]
        where = f"line {first['line']}" + (f" ({first['field']})" if first["field"] else "")
        return f"{errors['total']} invalid line(s); first: {where}: {first['message']}"
    out = f"{report['examples']} example(s) in the {report['format']} format"
    tokens = report.get("tokens")
    if tokens:
        out += f", {_token_total(tokens)} with the {tokens['model']} tokenizer"
    return out + (f"; {report['duplicates']['exact']} exact duplicate(s)" if report["duplicates"]["exact"] else "")


def token_summary(report: dict[str, Any]) -> str:
    """Token statistics in one sentence for a job's events."""
    tokens = report.get("tokens")
    if not tokens:
        return ""
    per = tokens["per_example"]
    out = (
        f"{_token_total(tokens)} with the {tokens['model']} chat template; "
        f"tokens per example min {per['min']}, mean {per['mean']}, p50 {per['p50']}, p95 {per['p95']}, "
        f"max {per['max']}"
    )
    over = tokens.get("over_max_seq_length", {}).get("total")
    if over:
        out += f"; {over} example(s) longer than max_seq_length={tokens['max_seq_length']}"
    near = report["duplicates"]["near"]
    if near:
        out += f"; {near} near-duplicate(s)"
    return out


def _token_total(tokens: dict[str, Any]) -> str:
    if tokens.get("prompt_only"):  # reinforcement: nothing of the file is trained on
        return f"{tokens['total']} prompt tokens (none trained: the model learns from its sampled answers)"
    return f"{tokens['total']} tokens ({tokens['trained']} trained)"


def evaluation_file_problem(file_id: str, kind: str, model: str, graded: bool, grader_given: bool) -> str | None:
    """Why an evaluation of ``model`` refuses its file ``file_id`` of ``kind`` (``supervised``, ``preference`` or
    ``reinforcement`` data), or None: reinforcement prompts need a grader (``graded``: the evaluation's own, or that
    of the reinforcement job that made the model), and a grader given with the evaluation (``grader_given``) grades
    reinforcement prompts only. The API (at create, for a file validated at upload) and the scheduler (when it
    validates the file) both ask this."""
    if kind == "reinforcement" and not graded:
        return (
            f"File {file_id} holds reinforcement data (prompts without answers): an evaluation scores chat or "
            "preference examples, each with the answer to score, or grades reinforcement prompts with a grader (the "
            f"evaluation's `grader`, or the grader of the reinforcement job that made the model). {model} was not made "
            "by a reinforcement job: give the evaluation a grader."
        )
    if grader_given and kind != "reinforcement":
        examples = "preference" if kind == "preference" else "chat"
        return (
            f"File {file_id} holds {examples} examples, each with its answer: an evaluation's `grader` grades the "
            "answers the model samples to reinforcement prompts (OpenAI's reinforcement format: messages, plus the "
            "fields the grader reads). Evaluate this file without a grader (its answers are scored by loss), or give a "
            "file of reinforcement prompts."
        )
    return None
