"""Training data: the formats, the records a JSONL training file parses into, and the limits on a file.

Shared by the control plane (validation before a job is queued) and the trainer (which reads the same
records), so both agree on what a file contains. No torch here.

Formats are detected per file: the first line that is a valid JSON object decides, and every later line must
be in the same format. Supervised formats (OpenAI chat, legacy prompt/completion, alpaca, sharegpt) all
normalize to :class:`ChatRecord`; preference formats (OpenAI DPO, TRL prompt/chosen/rejected) normalize to
:class:`PreferenceRecord`; OpenAI's reinforcement fine-tuning format normalizes to :class:`ReinforcementRecord`
(a prompt the model answers, and the line's other fields for graders). The per-format line parsers are in
:mod:`tunery.data_parsers`; reading a JSONL file (line splitting, the line rules,
:func:`~tunery.data_jsonl.parse_jsonl`) is in :mod:`tunery.data_jsonl`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MIN_EXAMPLES = 10
# Defaults of TUNERY_MAX_LINE_BYTES and TUNERY_MAX_LINES: one example (images included) and one file.
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_LINES = 10_000_000
MAX_LISTED_ERRORS = 100


def load_json(text: str) -> Any:
    """``json.loads`` for untrusted text: JSON nested deeper than the parser can follow (a line of 200,000 ``[``)
    is a ``json.JSONDecodeError`` like any other invalid JSON, not a RecursionError that escapes as a crash."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("JSON nested too deeply", text, 0) from None


class DataFormat(StrEnum):
    CHAT = "chat"
    PREFERENCE = "preference"
    COMPLETION = "completion"
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    TRL_PREFERENCE = "trl_preference"
    REINFORCEMENT = "reinforcement"

    @property
    def kind(self) -> str:
        """`supervised`, `preference` or `reinforcement`: which kind of training method the format feeds."""
        return FORMAT_KINDS[self]

    @property
    def label(self) -> str:
        return FORMAT_LABELS[self]


FORMAT_LABELS = {
    DataFormat.CHAT: "fine-tune-chat",
    DataFormat.PREFERENCE: "fine-tune-preference",
    DataFormat.COMPLETION: "fine-tune-completion",
    DataFormat.ALPACA: "alpaca",
    DataFormat.SHAREGPT: "sharegpt",
    DataFormat.TRL_PREFERENCE: "TRL preference",
    DataFormat.REINFORCEMENT: "fine-tune-reinforcement",
}
SUPERVISED = "supervised"
PREFERENCE = "preference"
REINFORCEMENT = "reinforcement"
# The kind of data each format is: the kind of training method that reads it (tunery.methods.MethodInfo.data).
FORMAT_KINDS = {
    DataFormat.CHAT: SUPERVISED,
    DataFormat.COMPLETION: SUPERVISED,
    DataFormat.ALPACA: SUPERVISED,
    DataFormat.SHAREGPT: SUPERVISED,
    DataFormat.PREFERENCE: PREFERENCE,
    DataFormat.TRL_PREFERENCE: PREFERENCE,
    DataFormat.REINFORCEMENT: REINFORCEMENT,
}


@dataclass
class ChatMessage:
    role: str
    content: str
    weight: int = 1  # assistant turns only: 0 = not trained on
    tool_calls: list[dict[str, Any]] | None = None  # assistant: [{id, type: "function", function: {name, arguments}}]
    tool_call_id: str | None = None  # tool: the call this message answers
    name: str | None = None

    def as_template_dict(self) -> dict[str, Any]:
        # `developer` is OpenAI's newer name for `system`; chat templates know `system`.
        role = "system" if self.role == "developer" else self.role
        out: dict[str, Any] = {"role": role, "content": self.content}
        if self.tool_calls:
            # Chat templates (HF convention) expect the arguments as an object, not a JSON string.
            out["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": _loads(c["function"]["arguments"])},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


def _loads(arguments: str) -> Any:
    try:
        return load_json(arguments)
    except json.JSONDecodeError:
        return arguments


@dataclass
class ChatRecord:
    """One supervised training example, in the one internal shape the trainer consumes."""

    messages: list[ChatMessage]
    line: int = 0
    tools: list[dict[str, Any]] | None = None
    parallel_tool_calls: bool | None = None

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        return self.tools or None


@dataclass
class PreferenceRecord:
    """One preference (DPO) example: a prompt conversation and a preferred and a rejected assistant reply."""

    prompt: list[ChatMessage]
    chosen: ChatMessage
    rejected: ChatMessage
    tools: list[dict[str, Any]] | None = None
    line: int = 0


@dataclass
class ReinforcementRecord:
    """One reinforcement fine-tuning example: the conversation the model answers, its tools, and the line's other
    fields, which graders read as {{item.*}}."""

    prompt: list[ChatMessage]
    item: dict[str, Any]  # every key of the line but messages and tools
    tools: list[dict[str, Any]] | None = None
    line: int = 0


Record = ChatRecord | PreferenceRecord | ReinforcementRecord


@dataclass
class LineError(Exception):
    line: int
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"line {self.line}{where}: {self.message}"


@dataclass
class ParseResult:
    records: list[Record] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    n_errors: int = 0
    n_lines: int = 0
    n_records: int = 0
    format: DataFormat | None = None  # decided by the first valid JSON object line
    format_line: int = 0
    # Exact duplicates: examples equal (as JSON, key order aside) to an earlier one; (line, first line) pairs.
    n_duplicates: int = 0
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    _seen: dict[int, int] = field(default_factory=dict, repr=False)

    def note_example(self, obj: Any, line: int) -> None:
        digest = int.from_bytes(
            hashlib.blake2b(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode(), digest_size=8).digest()
        )
        first = self._seen.setdefault(digest, line)
        if first != line:
            self.n_duplicates += 1
            if len(self.duplicates) < MAX_LISTED_ERRORS:
                self.duplicates.append((line, first))

    @property
    def kind(self) -> str | None:
        return self.format.kind if self.format else None

    def add_error(self, err: LineError) -> None:
        self.n_errors += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(err)
