"""Pure-Python text helpers of the engines: chat messages, stop strings, streaming hold-back, incremental
decoding. No torch here."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from serving.errors import EngineError

# Roles a chat template gets; "developer" is OpenAI's newer name for "system".
ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """OpenAI chat messages -> ``[{"role", "content"}]`` for ``apply_chat_template``.

    Accepts ``content`` as a string, ``None`` (as ``""``) or a list of ``{"type": "text", "text": ...}`` parts
    (joined). Raises EngineError (param ``messages[i]...``) for anything a text chat template cannot take.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise EngineError("'messages' must be a non-empty list of messages.", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise EngineError(f"messages[{i}] must be an object with 'role' and 'content'.", f"messages[{i}]")
        role = ROLE_ALIASES.get(m.get("role"), m.get("role"))  # type: ignore[arg-type]
        if role not in ROLES:
            raise EngineError(
                f"Invalid role {m.get('role')!r} in messages[{i}]; expected one of "
                "'system', 'developer', 'user', 'assistant', 'tool'.",
                f"messages[{i}].role",
            )
        content = m.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise EngineError("Only text content parts are supported.", f"messages[{i}].content[{j}]")
                parts.append(part["text"])
            text = "".join(parts)
        else:
            raise EngineError(f"messages[{i}].content must be a string.", f"messages[{i}].content")
        out.append({"role": role, "content": text})
    return out


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else -1


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string.

    A stream holds that many characters back: the next token may complete the stop string, and text of a stop
    string must never reach the client.
    """
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def emittable(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` (decoded so far) a stream may send: all but a possible stop-string start and an
    unfinished multi-byte character (the tokenizer decodes it as U+FFFD until its last byte arrives)."""
    end = len(text) - stop_holdback(text, stops)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    return end


class Detokenizer:
    """The text of a growing list of generated tokens, decoding only the last few per step (TGI's prefix and read
    offsets), so a long reply costs linear, not quadratic, time. A step whose tokens end inside a multi-byte
    character adds nothing until the character is complete."""

    def __init__(self, tokenizer: Any, lock: threading.Lock):
        self.tokenizer = tokenizer
        self.lock = lock
        self.prefix = self.read = 0  # ids[prefix:read] were decoded last time, as context for the next tokens
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        with self.lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def add(self, ids: list[int]) -> str:
        before = self._decode(ids[self.prefix : self.read])
        now = self._decode(ids[self.prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.text += now[len(before) :]
            self.prefix, self.read = self.read, len(ids)
        return self.text

    def finish(self, ids: list[int]) -> str:
        if self.read < len(ids):
            before = self._decode(ids[self.prefix : self.read])
            self.text += self._decode(ids[self.prefix :])[len(before) :]
            self.prefix = self.read = len(ids)
        return self.text
