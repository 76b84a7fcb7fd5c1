"""File validation before a job is queued: line-numbered errors, format/method fit and the example count."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tunery.data import MAX_LINE_BYTES, MAX_LINES, MIN_EXAMPLES, DataFormat, ParseResult, parse_jsonl
from tunery.storage import ObjectStore

SHOWN_ERRORS = 5
MIX_PARAM = "tunery.data.mix.file"  # the general-purpose file mixed into the training set (docs/data-options.md)
_LABELS = {"training_file": "training file", "validation_file": "validation file", MIX_PARAM: "mix file"}
# The training method each kind of file feeds (`method.type` of a job).
METHOD_FOR_KIND = {"supervised": "supervised", "preference": "dpo"}


@dataclass
class FileCheck:
    n_examples: int
    error: dict[str, str | None] | None  # OpenAI job error object when the file can't be used
    format: DataFormat | None = None
    line: int | None = None  # the first invalid line, when the error is about lines
    field: str | None = None  # its field path, when known
    n_duplicates: int = 0

    def summary(self, file_id: str, param: str) -> str:
        """One line for the job's events."""
        fmt = f" in the {self.format.value} format" if self.format else ""
        dup = f", {self.n_duplicates} exact duplicate(s)" if self.n_duplicates else ""
        return f"{_label(param).capitalize()} {file_id}: {self.n_examples} example(s){fmt}{dup}"


def _label(param: str) -> str:
    return _LABELS.get(param, param.replace("_", " "))


def file_error_code(param: str) -> str:
    """The job error code for a problem with the file given as ``param``."""
    return {"training_file": "invalid_training_file", MIX_PARAM: "invalid_mix_file"}.get(
        param, "invalid_validation_file"
    )


_code = file_error_code


def check_method_fit(
    fmt: DataFormat | None, file_id: str, method: str, param: str = "training_file"
) -> dict[str, str | None] | None:
    """The job error when a file's format does not fit the job's training method (None when it fits).

    Worded like OpenAI's: "Input file file-… is in the fine-tune-chat format, but the specified fine-tuning job
    is not using 'supervised' as the training method (provided method=dpo)."
    """
    if fmt is None:
        return None
    wanted = METHOD_FOR_KIND[fmt.kind]
    if wanted == method:
        return None
    return {
        "code": _code(param),
        "message": f"Input file {file_id} is in the {fmt.label} format, but the specified fine-tuning job is not "
        f"using '{wanted}' as the training method (provided method={method}).",
        "param": param,
    }


def check_chunks(
    chunks: Iterable[bytes],
    file_id: str,
    param: str,
    method: str = "supervised",
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_lines: int = MAX_LINES,
) -> FileCheck:
    """Validate a file's bytes (streamed) for a job of training method `method`."""
    result: ParseResult = parse_jsonl(chunks, keep_records=False, max_line_bytes=max_line_bytes, max_lines=max_lines)
    n = result.n_records
    if result.n_errors:
        shown = "; ".join(str(e) for e in result.errors[:SHOWN_ERRORS])
        more = f" (and {result.n_errors - SHOWN_ERRORS} more)" if result.n_errors > SHOWN_ERRORS else ""
        first = result.errors[0]
        return FileCheck(
            n,
            {
                "code": _code(param),
                "message": f"The job failed due to an invalid {_label(param)} ({file_id}). "
                f"Invalid file format: {result.n_errors} invalid line(s): {shown}{more}.",
                "param": param,
            },
            result.format,
            first.line,
            first.field,
        )
    fit = check_method_fit(result.format, file_id, method, param)
    if fit:
        return FileCheck(n, fit, result.format)
    if param == "training_file" and n < MIN_EXAMPLES:
        return FileCheck(
            n,
            {
                "code": "invalid_n_examples",
                "message": f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples",
                "param": param,
            },
            result.format,
        )
    if n == 0:
        return FileCheck(
            n,
            {"code": _code(param), "message": f"{_label(param).capitalize()} has no examples", "param": param},
            result.format,
        )
    return FileCheck(n, None, result.format, n_duplicates=result.n_duplicates)


def check_file(
    store: ObjectStore,
    key: str,
    file_id: str,
    param: str,
    method: str = "supervised",
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_lines: int = MAX_LINES,
) -> FileCheck:
    return check_chunks(
        store.iter_chunks(key), file_id, param, method, max_line_bytes=max_line_bytes, max_lines=max_lines
    )


REPORT_OBJECT = "file.validation"


def report_key(file_id: str) -> str:
    return f"reports/files/{file_id}/validation.json"


def file_report(file_id: str, result: ParseResult, created_at: int) -> dict[str, Any]:
    """The validation report of an uploaded training file (``GET /v1/files/{id}/validation``)."""
    status = "error" if result.n_errors or not result.n_records else "processed"
    warnings = []
    if status == "processed" and result.n_records < MIN_EXAMPLES:
        warnings.append(f"The file has {result.n_records} example(s); a fine-tuning job needs at least {MIN_EXAMPLES}.")
    if result.n_duplicates:
        warnings.append(f"{result.n_duplicates} example(s) repeat an earlier example exactly.")
    return {
        "object": REPORT_OBJECT,
        "file_id": file_id,
        "status": status,
        "created_at": created_at,
        "format": result.format.value if result.format else None,
        "kind": result.kind,
        "lines": result.n_lines,
        "examples": result.n_records,
        "errors": {
            "total": result.n_errors,
            "listed": [{"line": e.line, "field": e.field, "message": e.message} for e in result.errors],
        },
        "duplicates": {
            "exact": result.n_duplicates,
            "listed": [{"line": line, "duplicate_of": first} for line, first in result.duplicates],
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
    return out + (f"; {report['duplicates']['exact']} exact duplicate(s)" if report["duplicates"]["exact"] else "")
