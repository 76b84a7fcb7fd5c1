"""The run's data files: read from the object store, hashed on the way (the SHA-256 must match the one recorded
when the file was validated) and parsed into the records of the method's kind."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tunery.data import ChatRecord, ParseResult, PreferenceRecord, ReinforcementRecord
from tunery.data_jsonl import parse_jsonl
from tunery.jobspec import DataFile
from tunery.jobstate import file_error_code
from tunery.storage import ObjectNotFound, ObjectStore

from .errors import TrainerError

Record = ChatRecord | PreferenceRecord | ReinforcementRecord

# Per kind of data (tunery.data.FORMAT_KINDS): its record type, and what a method of that kind needs, for the error
# when a file is of another kind.
RECORD_TYPES: dict[str, type[Record]] = {
    "supervised": ChatRecord,
    "preference": PreferenceRecord,
    "reinforcement": ReinforcementRecord,
}
NEEDS = {
    "supervised": "supervised data (chat messages per line)",
    "preference": "preference data: input, preferred_output and non_preferred_output per line",
    "reinforcement": "reinforcement data: messages per line that end before the model's answer (no final "
    "assistant message), with the fields graders read",
}


@dataclass
class DataFileRead:
    records: list[Any]  # ChatRecord, PreferenceRecord or ReinforcementRecord: RECORD_TYPES[kind]
    sha256: str
    n_bytes: int


def read_data_file(store: ObjectStore, data_file: DataFile, param: str, code: str) -> tuple[ParseResult, str, int]:
    """Read, hash and parse one training or validation file: (parse result, SHA-256, bytes). A missing file, one
    changed since it was validated, or one with invalid lines is a TrainerError with ``code``."""
    digest = hashlib.sha256()
    size = 0

    def chunks() -> Any:
        nonlocal size
        for chunk in store.iter_chunks(data_file.key):
            digest.update(chunk)
            size += len(chunk)
            yield chunk

    try:
        result = parse_jsonl(chunks())
    except ObjectNotFound as e:
        raise TrainerError(
            f"{param} {data_file.file_id} is missing from the object store", code=code, param=param
        ) from e
    sha = digest.hexdigest()
    if data_file.sha256 and data_file.sha256 != sha:
        raise TrainerError(
            f"{param} {data_file.file_id} changed after it was validated (SHA-256 mismatch)", code=code, param=param
        )
    if result.n_errors:
        raise TrainerError(
            f"{param} {data_file.file_id} has {result.n_errors} invalid line(s); first: {result.errors[0]}",
            code=code,
            param=param,
        )
    return result, sha, size


def read_records(store: ObjectStore, data_file: DataFile, param: str, kind: str = "supervised") -> DataFileRead:
    """Read and parse one data file of ``kind`` (``supervised``: chat, completion, alpaca or sharegpt, normalized to
    ChatRecord; ``preference``: OpenAI's or TRL's preference lines, normalized to PreferenceRecord;
    ``reinforcement``: OpenAI's reinforcement lines, normalized to ReinforcementRecord). A file of another kind, or
    with no example, is a TrainerError naming ``param``."""
    if kind not in RECORD_TYPES:
        raise ValueError(f"unknown kind of data {kind!r} (expected one of {', '.join(RECORD_TYPES)})")
    code = file_error_code(param).value
    result, sha, size = read_data_file(store, data_file, param, code)
    if result.format is not None and result.format.kind != kind:
        raise TrainerError(
            f"{param} {data_file.file_id} is in the {result.format.label} format ({result.format.kind} data), but "
            f"this job's method needs {NEEDS[kind]}",
            code=code,
            param=param,
        )
    wanted = RECORD_TYPES[kind]
    records = [r for r in result.records if isinstance(r, wanted)]
    if not records:
        raise TrainerError(f"{param} {data_file.file_id} contains no examples", code=code, param=param)
    return DataFileRead(records=records, sha256=sha, n_bytes=size)


def read_chat_file(store: ObjectStore, data_file: DataFile, param: str) -> DataFileRead:
    """A supervised data file (see :func:`read_records`)."""
    return read_records(store, data_file, param, "supervised")
