"""Chat templates without torch or transformers: rendering, the trained (assistant) spans, and a fast path.

* :class:`ChatTemplate` renders a model's Jinja chat template the way transformers' ``apply_chat_template``
  does (sandboxed environment, ``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, ``raise_exception``,
  ``tojson``, ``strftime_now``, the tokenizer's special tokens as variables).
* :func:`trained_spans` finds the character spans of the assistant turns that carry loss. The trainer uses the
  same function (through its tokenizer's renderer), so validation counts exactly what the trainer trains on:
  for each trained assistant turn ``i`` the rendering of ``messages[:i]`` with the generation prompt and the
  rendering of ``messages[:i+1]`` must both be prefixes of the whole conversation; the span runs from the end
  of the first to just after the end-of-turn token that closes the turn.
* :class:`SkeletonRenderer` makes that cheap for large files. Conversations with the same structure (roles and
  weights, no tools) render to the same text around their contents, so the template is rendered once per
  structure with placeholder contents and every example is assembled by substitution. A structure is used this
  way only after checks show the template copies contents verbatim (placeholders with surrounding whitespace
  come out unchanged, and the first real examples of the structure render identically); otherwise every
  example of that structure is rendered in full.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from tunery.data import ChatMessage, ChatRecord

Span = tuple[int, int]
Renderer = Callable[[Sequence[ChatMessage], bool, "list[dict[str, Any]] | None"], str]


class ChatTemplateError(ValueError):
    """The chat template cannot be used to compute an assistant mask for this record."""

    def __init__(self, message: str, line: int = 0):
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    # transformers overrides Jinja's tojson (which escapes HTML characters) the same way.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Generation(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` blocks render their body (transformers tracks them; we locate
    assistant turns by prefix renderings instead)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def compile_template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatTemplate:
    """A model's chat template with its special-token variables (``bos_token``, ``eos_token``, …)."""

    def __init__(self, source: str, variables: dict[str, str] | None = None):
        self.source = source
        self.variables = dict(variables or {})
        self._template = compile_template(source)

    def render(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        return self._template.render(
            messages=[m.as_template_dict() for m in messages],
            tools=tools or None,
            add_generation_prompt=add_generation_prompt,
            **self.variables,
        )


def trained_spans(render: Renderer, record: ChatRecord, end_of_turn: Sequence[str]) -> tuple[str, list[Span]]:
    """The full rendering of ``record`` and the character spans of its trained assistant turns."""
    messages = record.messages
    line = record.line
    tools = record.tools or None
    full = render(messages, False, tools)
    spans: list[Span] = []
    for i, message in enumerate(messages):
        if message.role != "assistant" or message.weight == 0:
            continue
        upto = render(messages[: i + 1], False, tools)
        if not full.startswith(upto):
            raise ChatTemplateError(
                f"the chat template does not render messages append-only: the rendering of the first {i + 1} "
                "messages is not a prefix of the whole conversation",
                line,
            )
        if i > 0:
            head = render(messages[:i], True, tools)
            if not upto.startswith(head):
                raise ChatTemplateError(
                    f"the chat template's generation prompt for message {i} is not a prefix of the rendered "
                    "assistant turn, so the assistant tokens cannot be located",
                    line,
                )
            start = len(head)
        else:
            # No earlier messages to render with the generation prompt: locate the content itself.
            start = upto.find(message.content) if message.content else -1
            if start < 0:
                raise ChatTemplateError(
                    "a conversation that starts with an assistant message needs non-empty content that the "
                    "chat template renders verbatim",
                    line,
                )
        spans.append((start, _turn_end(upto, start, message.content, end_of_turn)))
    return full, spans


def _turn_end(upto: str, start: int, content: str, end_of_turn: Sequence[str]) -> int:
    """End of the trained span: just after the turn's end-of-turn token (not the whitespace after it)."""
    search_from = start + len(content) if content and upto.startswith(content, start) else start
    best = -1
    for token in end_of_turn:
        pos = upto.rfind(token, search_from)
        if pos >= 0:
            best = max(best, pos + len(token))
    if best >= 0:
        return best
    # The template closes the turn without an EOS token: train on the turn's text.
    return max(start, len(upto.rstrip()))


# ---- the fast path ----------------------------------------------------------------------------------------
_MARK = "\ue000"  # a private-use character: placeholders are _MARK + index + _MARK


def _placeholder(i: int, padded: bool = False) -> str:
    return f" \n{_MARK}{i}{_MARK}\t " if padded else f"{_MARK}{i}{_MARK}"


@dataclass
class _Skeleton:
    pieces: list[str]  # literal text around the contents: len(contents) + 1 pieces
    # Each trained span as (content index before which it starts or -1, offset, content index, offset):
    # a position is "offset characters after the end of content k" (k = -1: from the start of the text).
    spans: list[tuple[int, int, int, int]]
    verified: int = 0  # real examples checked against a full rendering


def _structure(record: ChatRecord) -> tuple[Any, ...] | None:
    """The part of a record the template may branch on; None when substitution is not safe."""
    if record.tools:
        return None
    key: list[Any] = []
    for m in record.messages:
        if m.tool_calls or m.tool_call_id is not None or m.name is not None or _MARK in m.content:
            return None
        key.append((m.role, m.weight, not m.content))
    return tuple(key)


class SkeletonRenderer:
    """Renders records (and their trained spans) by substitution into a per-structure skeleton."""

    VERIFY = 2  # real examples of each structure compared with a full rendering before trusting it

    def __init__(self, template: ChatTemplate, end_of_turn: Sequence[str]):
        self.template = template
        self.end_of_turn = list(end_of_turn)
        self._skeletons: dict[tuple[Any, ...], _Skeleton | None] = {}
        self.n_fast = 0
        self.n_full = 0

    def _render(self, messages: Sequence[ChatMessage], gen: bool, tools: list[dict[str, Any]] | None) -> str:
        return self.template.render(messages, gen, tools)

    def full(self, record: ChatRecord) -> tuple[str, list[Span]]:
        """Render ``record`` in full (the reference path)."""
        self.n_full += 1
        return trained_spans(self._render, record, self.end_of_turn)

    def render(self, record: ChatRecord) -> tuple[str, list[Span]]:
        key = _structure(record)
        if key is None:
            return self.full(record)
        if key not in self._skeletons:
            self._skeletons[key] = self._build(record)
        skeleton = self._skeletons[key]
        if skeleton is None:
            return self.full(record)
        text, spans = self._assemble(skeleton, [m.content for m in record.messages])
        if skeleton.verified < self.VERIFY:
            if self.full(record) != (text, spans):
                self._skeletons[key] = None
                return self.full(record)
            skeleton.verified += 1
            return text, spans
        self.n_fast += 1
        return text, spans

    def _build(self, record: ChatRecord) -> _Skeleton | None:
        def with_placeholders(padded: bool) -> ChatRecord:
            msgs = [
                ChatMessage(role=m.role, content=_placeholder(i, padded) if m.content else "", weight=m.weight)
                for i, m in enumerate(record.messages)
            ]
            return ChatRecord(messages=msgs, line=record.line)

        try:
            text, spans = trained_spans(self._render, with_placeholders(False), self.end_of_turn)
            padded_text, padded_spans = trained_spans(self._render, with_placeholders(True), self.end_of_turn)
        except (ChatTemplateError, jinja2.TemplateError):
            return None
        contents = [_placeholder(i) if m.content else "" for i, m in enumerate(record.messages)]
        skeleton = self._skeleton(text, spans, contents)
        if skeleton is None:
            return None
        # The template must copy contents verbatim (no trimming or escaping): padded placeholders survive.
        padded = [_placeholder(i, True) if m.content else "" for i, m in enumerate(record.messages)]
        if self._assemble(skeleton, padded) != (padded_text, padded_spans):
            return None
        return skeleton

    @staticmethod
    def _skeleton(text: str, spans: list[Span], contents: list[str]) -> _Skeleton | None:
        pieces: list[str] = []
        ends: list[tuple[int, int]] = []  # (index of content, its end in the skeleton text)
        pos = 0
        for i, content in enumerate(contents):
            if not content:
                continue
            at = text.find(content, pos)
            if at < 0 or text.count(content) != 1:
                return None
            pieces.append(text[pos:at])
            ends.append((i, at + len(content)))
            pos = at + len(content)
        pieces.append(text[pos:])
        starts = [end - len(contents[i]) for i, end in ends]

        def anchor(p: int) -> tuple[int, int] | None:
            k, base = -1, 0
            for (i, end), start in zip(ends, starts, strict=True):
                if start < p < end:
                    return None  # inside a content: not expressible
                if end <= p:
                    k, base = i, end
            return k, p - base

        out: list[tuple[int, int, int, int]] = []
        for s, e in spans:
            a, b = anchor(s), anchor(e)
            if a is None or b is None:
                return None
            out.append((*a, *b))
        # Pieces are stored between non-empty contents only; remember which contents are present.
        return _Skeleton(pieces=pieces, spans=out) if _present(contents) else None

    @staticmethod
    def _assemble(skeleton: _Skeleton, contents: list[str]) -> tuple[str, list[Span]]:
        parts: list[str] = [skeleton.pieces[0]]
        end_of: dict[int, int] = {}
        pos = len(skeleton.pieces[0])
        j = 1
        for i, content in enumerate(contents):
            if not content:
                continue
            parts.append(content)
            pos += len(content)
            end_of[i] = pos
            piece = skeleton.pieces[j]
            parts.append(piece)
            pos += len(piece)
            j += 1
        spans = [
            ((end_of[a] if a >= 0 else 0) + da, (end_of[b] if b >= 0 else 0) + db) for a, da, b, db in skeleton.spans
        ]
        return "".join(parts), spans


def _present(contents: list[str]) -> bool:
    return any(contents)
