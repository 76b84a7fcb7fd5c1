"""File validation before a job is queued: line-numbered errors and the example count."""

from __future__ import annotations

from dataclasses import dataclass

from tunery.data import MIN_EXAMPLES, parse_chat_jsonl
from tunery.storage import ObjectStore

SHOWN_ERRORS = 5


@dataclass
class FileCheck:
    n_examples: int
    error: dict[str, str | None] | None  # OpenAI job error object when the file can't be used


def check_file(store: ObjectStore, key: str, file_id: str, param: str) -> FileCheck:
    result = parse_chat_jsonl(store.iter_chunks(key), keep_records=False)
    n = len(result.records)
    if result.n_errors:
        shown = "; ".join(str(e) for e in result.errors[:SHOWN_ERRORS])
        more = f" (and {result.n_errors - SHOWN_ERRORS} more)" if result.n_errors > SHOWN_ERRORS else ""
        return FileCheck(
            n,
            {
                "code": "invalid_training_file" if param == "training_file" else "invalid_validation_file",
                "message": f"The job failed due to an invalid {param.replace('_', ' ')} ({file_id}). "
                f"Invalid file format: {result.n_errors} invalid line(s): {shown}{more}.",
                "param": param,
            },
        )
    if param == "training_file" and n < MIN_EXAMPLES:
        return FileCheck(
            n,
            {
                "code": "invalid_n_examples",
                "message": f"Training file has {n} example(s), but must have at least {MIN_EXAMPLES} examples",
                "param": param,
            },
        )
    if n == 0:
        return FileCheck(
            n, {"code": "invalid_validation_file", "message": "Validation file has no examples", "param": param}
        )
    return FileCheck(n, None)
