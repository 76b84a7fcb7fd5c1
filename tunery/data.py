"""Training data: parse OpenAI chat JSONL into records, with line-numbered errors.

Shared by the control plane (validation before a job is queued) and the trainer (which reads the same
records), so both agree on what a file contains. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

MIN_EXAMPLES = 10
MAX_LISTED_ERRORS = 100
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class ChatMessage:
    role: str
    content: str
    weight: int = 1  # assistant turns only: 0 = not trained on

    def as_template_dict(self) -> dict[str, Any]:
        # `developer` is OpenAI's newer name for `system`; chat templates know `system`.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.content}


@dataclass
class ChatRecord:
    """One training example, in the one internal shape the trainer consumes."""

    messages: list[ChatMessage]
    line: int = 0


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
    records: list[ChatRecord] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    n_errors: int = 0
    n_lines: int = 0

    def add_error(self, err: LineError) -> None:
        self.n_errors += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(err)


def _content_text(content: Any, path: str, line: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise LineError(line, "only text content parts are supported", f"{path}[{i}]")
            parts.append(part["text"])
        return "".join(parts)
    raise LineError(line, "content must be a string or a list of text parts", path)


def parse_chat_line(obj: Any, line: int) -> ChatRecord:
    """One OpenAI chat example -> ChatRecord; raises LineError with the field path."""
    if not isinstance(obj, dict):
        raise LineError(line, "each line must be a JSON object")
    messages = obj.get("messages")
    if messages is None:
        raise LineError(line, "missing 'messages'", "messages")
    if not isinstance(messages, list) or not messages:
        raise LineError(line, "'messages' must be a non-empty list", "messages")
    out: list[ChatMessage] = []
    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(m, dict):
            raise LineError(line, "message must be an object", path)
        role = m.get("role")
        if role not in ROLES:
            raise LineError(line, f"unknown role {role!r}", f"{path}.role")
        content = m.get("content")
        if content is None:
            if role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
                raise LineError(line, "tool calls are not supported yet", f"{path}.tool_calls")
            raise LineError(line, "missing 'content'", f"{path}.content")
        text = _content_text(content, f"{path}.content", line)
        weight = m.get("weight", 1)
        if "weight" in m and (role != "assistant" or weight not in (0, 1) or isinstance(weight, bool)):
            raise LineError(line, "'weight' must be 0 or 1, on assistant messages only", f"{path}.weight")
        out.append(ChatMessage(role=role, content=text, weight=int(weight)))
    if not any(m.role == "assistant" and m.weight == 1 for m in out):
        raise LineError(line, "example has no assistant message to learn from", "messages")
    return ChatRecord(messages=out, line=line)


def iter_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line) from a byte stream, without holding the whole file."""
    buf = b""
    n = 0
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            n += 1
            yield n, raw
    if buf:
        yield n + 1, buf


def parse_chat_jsonl(chunks: Iterable[bytes], keep_records: bool = True) -> ParseResult:
    """Parse a chat JSONL stream. Blank lines at the end are ignored; elsewhere they are errors."""
    result = ParseResult()
    pending_blank: list[int] = []
    for n, raw in iter_lines(chunks):
        result.n_lines = n
        if not raw.strip():
            pending_blank.append(n)
            continue
        for b in pending_blank:
            result.add_error(LineError(b, "blank line"))
        pending_blank.clear()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            result.add_error(LineError(n, "line is not valid UTF-8"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            result.add_error(LineError(n, f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        try:
            record = parse_chat_line(obj, n)
        except LineError as err:
            result.add_error(err)
            continue
        if keep_records:
            result.records.append(record)
        else:
            result.records.append(ChatRecord(messages=[], line=n))
    return result
