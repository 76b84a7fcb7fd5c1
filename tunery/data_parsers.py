"""The per-format line parsers of training data: one decoded JSON line -> its :mod:`tunery.data` record.

Format detection from a line's keys (:func:`detect_format`), one parser per :class:`~tunery.data.DataFormat`
(OpenAI chat with tools, OpenAI preference, prompt/completion, alpaca, sharegpt, TRL preference, OpenAI
reinforcement) and :func:`parse_line`, which every line of a file goes through. Each raises
:class:`~tunery.data.LineError` with the field path of what is wrong.

OpenAI chat and OpenAI reinforcement lines both hold ``messages``: a line whose last message is an assistant reply
is a chat example (the reply is what it trains on), one that ends with any other message is a reinforcement prompt
(the model answers after it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tunery.data import (
    ChatMessage,
    ChatRecord,
    DataFormat,
    LineError,
    PreferenceRecord,
    Record,
    ReinforcementRecord,
    load_json,
)

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

# sharegpt `from` values -> roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
}


# ---- detection --------------------------------------------------------------------------------------------
def detect_format(obj: Any) -> DataFormat | None:
    """The format a JSON line looks like, from its keys; None when it looks like none of them."""
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return DataFormat.REINFORCEMENT if _ends_with_assistant(obj) is False else DataFormat.CHAT
    if any(k in obj for k in ("preferred_output", "non_preferred_output", "preferred_completion")) or (
        "non_preferred_completion" in obj or isinstance(obj.get("input"), dict)
    ):
        return DataFormat.PREFERENCE
    if "chosen" in obj or "rejected" in obj:
        return DataFormat.TRL_PREFERENCE
    if "conversations" in obj:
        return DataFormat.SHAREGPT
    if "instruction" in obj or "output" in obj:
        return DataFormat.ALPACA
    if "prompt" in obj or "completion" in obj:
        return DataFormat.COMPLETION
    return None


def _ends_with_assistant(obj: dict[str, Any]) -> bool | None:
    """Whether a line's ``messages`` ends with an assistant message; None when its last message has no known role
    (or there is none): the line is malformed in either format, and its parser says how."""
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") not in ROLES:
        return None
    return bool(last["role"] == "assistant")


# ---- OpenAI chat ------------------------------------------------------------------------------------------
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


def _function_call(call: Any, path: str, line: int) -> tuple[str, str]:
    """(name, arguments) of an OpenAI function object, checked."""
    if not isinstance(call, dict):
        raise LineError(line, "function call must be an object", path)
    name = call.get("name")
    if not isinstance(name, str) or not name:
        raise LineError(line, "function call needs a non-empty 'name'", f"{path}.name")
    arguments = call.get("arguments")
    if not isinstance(arguments, str):
        raise LineError(line, "'arguments' must be a JSON string", f"{path}.arguments")
    try:
        load_json(arguments)
    except json.JSONDecodeError as e:
        raise LineError(line, f"'arguments' is not valid JSON: {e.msg}", f"{path}.arguments") from None
    return name, arguments


def _tool_calls(raw: Any, path: str, line: int) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise LineError(line, "'tool_calls' must be a non-empty list", path)
    out = []
    for j, call in enumerate(raw):
        cpath = f"{path}[{j}]"
        if not isinstance(call, dict):
            raise LineError(line, "tool call must be an object", cpath)
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise LineError(line, "tool call needs a non-empty string 'id'", f"{cpath}.id")
        if call.get("type", "function") != "function":
            raise LineError(line, "tool call 'type' must be 'function'", f"{cpath}.type")
        if "function" not in call:
            raise LineError(line, "tool call needs a 'function'", f"{cpath}.function")
        name, arguments = _function_call(call["function"], f"{cpath}.function", line)
        out.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    return out


def _tool_list(obj: dict[str, Any], line: int) -> list[dict[str, Any]]:
    """The line's ``tools`` (function tools), checked; [] when it has none."""
    tools: list[dict[str, Any]] = []
    if obj.get("tools") is not None:
        raw = obj["tools"]
        if not isinstance(raw, list):
            raise LineError(line, "'tools' must be a list", "tools")
        for i, t in enumerate(raw):
            if not isinstance(t, dict) or t.get("type", "function") != "function":
                raise LineError(line, "each tool must be an object of type 'function'", f"tools[{i}]")
            fn = t.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise LineError(line, "tool needs a 'function' with a non-empty 'name'", f"tools[{i}].function")
            tools.append({"type": "function", "function": fn})
    return tools


def _tools(obj: dict[str, Any], line: int) -> list[dict[str, Any]] | None:
    """The tools of a chat or preference line: ``tools``, the deprecated ``functions``, and a check of
    ``parallel_tool_calls``."""
    tools = _tool_list(obj, line)
    if obj.get("functions") is not None:  # deprecated: same as tools
        raw = obj["functions"]
        if not isinstance(raw, list):
            raise LineError(line, "'functions' must be a list", "functions")
        for i, fn in enumerate(raw):
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise LineError(line, "function needs a non-empty 'name'", f"functions[{i}]")
            tools.append({"type": "function", "function": fn})
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        raise LineError(line, "'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    return tools or None


def parse_messages(messages: Any, line: int, path: str = "messages") -> list[ChatMessage]:
    """An OpenAI `messages` list -> ChatMessages; tool calls and results are paired by id."""
    if not isinstance(messages, list) or not messages:
        raise LineError(line, f"'{path.rsplit('.', 1)[-1]}' must be a non-empty list", path)
    out: list[ChatMessage] = []
    pending: dict[str, str] = {}  # tool call id -> its field path, until its result arrives
    pending_functions: list[tuple[str, str, str]] = []  # deprecated function_call: (name, id, path)

    def unanswered() -> LineError:
        call_id, cpath = next(iter(pending.items()))
        return LineError(line, f"tool call {call_id!r} has no tool result (a 'tool' message with its id)", cpath)

    for i, m in enumerate(messages):
        mpath = f"{path}[{i}]"
        if not isinstance(m, dict):
            raise LineError(line, "message must be an object", mpath)
        role = m.get("role")
        if role not in ROLES:
            raise LineError(line, f"unknown role {role!r}", f"{mpath}.role")
        if role not in ("tool", "function") and pending:
            raise unanswered()
        if "name" in m and not isinstance(m["name"], str):
            raise LineError(line, "'name' must be a string", f"{mpath}.name")
        tool_calls = None
        if role == "assistant" and m.get("tool_calls") is not None:
            tool_calls = _tool_calls(m["tool_calls"], f"{mpath}.tool_calls", line)
            for j, c in enumerate(tool_calls):
                if c["id"] in pending:
                    raise LineError(line, f"duplicate tool call id {c['id']!r}", f"{mpath}.tool_calls[{j}].id")
                pending[c["id"]] = f"{mpath}.tool_calls[{j}]"
        elif m.get("tool_calls") is not None:
            raise LineError(line, "only assistant messages may have 'tool_calls'", f"{mpath}.tool_calls")
        if role == "assistant" and m.get("function_call") is not None:
            name, arguments = _function_call(m["function_call"], f"{mpath}.function_call", line)
            call_id = f"call_{i}"
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            tool_calls = [*(tool_calls or []), call]
            pending[call_id] = f"{mpath}.function_call"
            pending_functions.append((name, call_id, f"{mpath}.function_call"))
        content = m.get("content")
        if content is None:
            if role == "assistant" and tool_calls:
                text = ""
            elif "content" not in m:
                raise LineError(line, "missing 'content'", f"{mpath}.content")
            else:
                raise LineError(
                    line, "content may be null only on an assistant message with tool calls", f"{mpath}.content"
                )
        else:
            text = _content_text(content, f"{mpath}.content", line)
        weight = m.get("weight", 1)
        if "weight" in m and (role != "assistant" or weight not in (0, 1) or isinstance(weight, bool)):
            raise LineError(line, "'weight' must be 0 or 1, on assistant messages only", f"{mpath}.weight")
        msg = ChatMessage(role=role, content=text, weight=int(weight), tool_calls=tool_calls, name=m.get("name"))
        if role == "tool":
            result_id = m.get("tool_call_id")
            if not isinstance(result_id, str) or not result_id:
                raise LineError(line, "a tool message needs a string 'tool_call_id'", f"{mpath}.tool_call_id")
            if result_id not in pending:
                raise LineError(
                    line, f"tool result {result_id!r} does not answer an earlier tool call", f"{mpath}.tool_call_id"
                )
            del pending[result_id]
            msg.tool_call_id = result_id
        elif role == "function":  # deprecated: a result for the latest unanswered function_call of that name
            match = next((p for p in reversed(pending_functions) if p[0] == m.get("name") and p[1] in pending), None)
            if match is None:
                raise LineError(line, "function result does not answer an earlier function_call", f"{mpath}.name")
            del pending[match[1]]
            msg.role, msg.tool_call_id = "tool", match[1]
        out.append(msg)
    if pending:
        raise unanswered()
    return out


class _NoAssistant(LineError):
    """A supervised example with nothing to learn from (in a chat file, the shape of a reinforcement line)."""


def _needs_assistant(messages: list[ChatMessage], line: int, path: str) -> None:
    if not any(m.role == "assistant" for m in messages):
        raise _NoAssistant(line, "example has no assistant message to learn from", path)
    if not any(m.role == "assistant" and m.weight == 1 for m in messages):
        raise _NoAssistant(line, "example has no assistant message to learn from (every one has weight 0)", path)


def _require_object(obj: Any, line: int) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise LineError(line, "each line must be a JSON object")
    return obj


def parse_chat_line(obj: Any, line: int) -> ChatRecord:
    """One OpenAI chat example -> ChatRecord; raises LineError with the field path."""
    obj = _require_object(obj, line)
    if "messages" not in obj or obj["messages"] is None:
        raise LineError(line, "missing 'messages'", "messages")
    tools = _tools(obj, line)
    messages = parse_messages(obj["messages"], line)
    _needs_assistant(messages, line, "messages")
    return ChatRecord(messages=messages, line=line, tools=tools, parallel_tool_calls=obj.get("parallel_tool_calls"))


# ---- OpenAI preference ------------------------------------------------------------------------------------
def _one_assistant(obj: dict[str, Any], names: tuple[str, str], line: int) -> ChatMessage:
    key = next((k for k in names if k in obj), None)
    if key is None or obj[key] is None:
        raise LineError(line, f"missing '{names[0]}'", names[0])
    value = obj[key]
    if not isinstance(value, list) or len(value) != 1:
        raise LineError(line, f"'{key}' must be a list of exactly one assistant message", key)
    m = value[0]
    if not isinstance(m, dict):
        raise LineError(line, "message must be an object", f"{key}[0]")
    if m.get("role") != "assistant":
        raise LineError(line, f"'{key}' must be an assistant message, not {m.get('role')!r}", f"{key}[0].role")
    if m.get("tool_calls") is not None or m.get("function_call") is not None:
        raise LineError(line, "preference outputs must be text-only", f"{key}[0].tool_calls")
    if m.get("content") is None:
        raise LineError(line, "missing 'content'", f"{key}[0].content")
    text = _content_text(m["content"], f"{key}[0].content", line)
    if not text:
        raise LineError(line, "empty assistant content", f"{key}[0].content")
    return ChatMessage(role="assistant", content=text)


def _prompt_messages(messages: Any, line: int, path: str) -> list[ChatMessage]:
    prompt = parse_messages(messages, line, path)
    if prompt[-1].role == "assistant":
        raise LineError(line, "the prompt must not end with an assistant message", f"{path}[{len(prompt) - 1}].role")
    return prompt


def parse_preference_line(obj: Any, line: int) -> PreferenceRecord:
    obj = _require_object(obj, line)
    inp = obj.get("input")
    if inp is None:
        raise LineError(line, "missing 'input'", "input")
    if not isinstance(inp, dict):
        raise LineError(line, "'input' must be an object with 'messages'", "input")
    if inp.get("messages") is None:
        raise LineError(line, "missing 'messages'", "input.messages")
    tools = _tools(inp, line)
    prompt = _prompt_messages(inp["messages"], line, "input.messages")
    chosen = _one_assistant(obj, ("preferred_output", "preferred_completion"), line)
    rejected = _one_assistant(obj, ("non_preferred_output", "non_preferred_completion"), line)
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, tools=tools, line=line)


# ---- OpenAI reinforcement ---------------------------------------------------------------------------------
# "messages and tools are the only reserved keywords": every other key of a line is data for the graders.
REINFORCEMENT_RESERVED = ("messages", "tools")


def parse_reinforcement_line(obj: Any, line: int) -> ReinforcementRecord:
    """One OpenAI reinforcement fine-tuning line -> ReinforcementRecord; raises LineError with the field path.

    The messages are read as chat messages (assistant turns with tool calls and their tool results may come before
    the end) but the last one must not be an assistant message: the model answers after it. Only ``tools`` are its
    tools; ``functions``, ``parallel_tool_calls`` and any other key are item fields, kept as they are. A ``weight``
    on an assistant message is accepted as in chat (OpenAI's schema allows it) and means nothing here.
    """
    obj = _require_object(obj, line)
    if obj.get("messages") is None:
        raise LineError(line, "missing 'messages'", "messages")
    tools = _tool_list(obj, line) or None
    raw = obj["messages"]
    if isinstance(raw, list):
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                continue
            if m.get("role") == "function":
                raise LineError(
                    line,
                    "the fine-tune-reinforcement format has no 'function' role (use a 'tool' message)",
                    f"messages[{i}].role",
                )
            if m.get("function_call") is not None:
                raise LineError(
                    line,
                    "the fine-tune-reinforcement format has no 'function_call' (use 'tool_calls')",
                    f"messages[{i}].function_call",
                )
    prompt = parse_messages(raw, line)
    if prompt[-1].role == "assistant":
        raise LineError(
            line,
            "the last message must not be an assistant message: the model answers after it",
            f"messages[{len(prompt) - 1}].role",
        )
    item = {k: v for k, v in obj.items() if k not in REINFORCEMENT_RESERVED}
    return ReinforcementRecord(prompt=prompt, item=item, tools=tools, line=line)


# ---- other formats ----------------------------------------------------------------------------------------
def _string(obj: dict[str, Any], key: str, line: int, *, required: bool = True, non_empty: bool = False) -> str:
    if obj.get(key) is None:
        if required:
            raise LineError(line, f"missing '{key}'", key)
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise LineError(line, f"'{key}' must be a string, not {type(value).__name__}", key)
    if non_empty and not value.strip():
        raise LineError(line, f"'{key}' is empty", key)
    return value


def parse_completion_line(obj: Any, line: int) -> ChatRecord:
    obj = _require_object(obj, line)
    prompt = _string(obj, "prompt", line)
    completion = _string(obj, "completion", line, non_empty=True)
    return ChatRecord(
        messages=[ChatMessage("user", prompt), ChatMessage("assistant", completion)],
        line=line,
    )


def parse_alpaca_line(obj: Any, line: int) -> ChatRecord:
    obj = _require_object(obj, line)
    instruction = _string(obj, "instruction", line, non_empty=True)
    extra = _string(obj, "input", line, required=False)
    output = _string(obj, "output", line, non_empty=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = []
    if obj.get("system") is not None:
        messages.append(ChatMessage("system", _string(obj, "system", line)))
    messages += [ChatMessage("user", user), ChatMessage("assistant", output)]
    return ChatRecord(messages=messages, line=line)


def parse_sharegpt_line(obj: Any, line: int) -> ChatRecord:
    obj = _require_object(obj, line)
    turns = obj.get("conversations")
    if turns is None:
        raise LineError(line, "missing 'conversations'", "conversations")
    if not isinstance(turns, list) or not turns:
        raise LineError(line, "'conversations' must be a non-empty list", "conversations")
    messages = []
    for i, t in enumerate(turns):
        path = f"conversations[{i}]"
        if not isinstance(t, dict):
            raise LineError(line, "turn must be an object", path)
        source = t.get("from")
        role = SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
        if role is None:
            known = ", ".join(sorted(SHAREGPT_ROLES))
            raise LineError(line, f"unknown 'from' value {source!r} (expected one of {known})", f"{path}.from")
        value = t.get("value")
        if value is None:
            raise LineError(line, "missing 'value'", f"{path}.value")
        if not isinstance(value, str):
            raise LineError(line, "'value' must be a string", f"{path}.value")
        if not value.strip():
            raise LineError(line, "empty 'value'", f"{path}.value")
        messages.append(ChatMessage(role, value))
    _needs_assistant(messages, line, "conversations")
    return ChatRecord(messages=messages, line=line)


def _trl_side(obj: dict[str, Any], key: str, line: int) -> tuple[list[ChatMessage] | None, ChatMessage]:
    """A TRL chosen/rejected value: (its own prompt part when conversational, the final assistant message)."""
    value = obj.get(key)
    if value is None:
        raise LineError(line, f"missing '{key}'", key)
    if isinstance(value, str):
        if not value.strip():
            raise LineError(line, f"'{key}' is empty", key)
        return None, ChatMessage("assistant", value)
    if isinstance(value, list):
        messages = parse_messages(value, line, key)
        last = messages[-1]
        if last.role != "assistant":
            raise LineError(line, f"'{key}' must end with an assistant message", f"{key}[{len(messages) - 1}].role")
        if last.tool_calls or not last.content:
            raise LineError(line, "the final assistant message needs text content", f"{key}[{len(messages) - 1}]")
        return messages[:-1], last
    raise LineError(line, f"'{key}' must be a string or a list of messages", key)


def parse_trl_preference_line(obj: Any, line: int) -> PreferenceRecord:
    obj = _require_object(obj, line)
    raw_prompt = obj.get("prompt")
    prompt: list[ChatMessage] | None
    if raw_prompt is None:
        prompt = None
    elif isinstance(raw_prompt, str):
        prompt = [ChatMessage("user", raw_prompt)]
    elif isinstance(raw_prompt, list):
        prompt = _prompt_messages(raw_prompt, line, "prompt")
    else:
        raise LineError(line, "'prompt' must be a string or a list of messages", "prompt")
    chosen_head, chosen = _trl_side(obj, "chosen", line)
    rejected_head, rejected = _trl_side(obj, "rejected", line)
    if prompt is None:  # implicit prompt: the conversation before the last message, the same on both sides
        if not chosen_head:
            raise LineError(line, "missing 'prompt'", "prompt")
        if [m.as_template_dict() for m in chosen_head] != [m.as_template_dict() for m in rejected_head or []]:
            raise LineError(line, "'chosen' and 'rejected' must share the same prompt messages", "rejected")
        prompt = chosen_head
    elif chosen_head or rejected_head:
        side = "chosen" if chosen_head else "rejected"
        raise LineError(line, f"with an explicit 'prompt', '{side}' must hold only the assistant reply", side)
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, tools=_tools(obj, line), line=line)


PARSERS: dict[DataFormat, Callable[[Any, int], Record]] = {
    DataFormat.CHAT: parse_chat_line,
    DataFormat.PREFERENCE: parse_preference_line,
    DataFormat.COMPLETION: parse_completion_line,
    DataFormat.ALPACA: parse_alpaca_line,
    DataFormat.SHAREGPT: parse_sharegpt_line,
    DataFormat.TRL_PREFERENCE: parse_trl_preference_line,
    DataFormat.REINFORCEMENT: parse_reinforcement_line,
}
REQUIRED_KEY = {
    DataFormat.CHAT: "messages",
    DataFormat.PREFERENCE: "input",
    DataFormat.COMPLETION: "completion",
    DataFormat.ALPACA: "output",
    DataFormat.SHAREGPT: "conversations",
    DataFormat.TRL_PREFERENCE: "chosen",
    DataFormat.REINFORCEMENT: "messages",
}


def parse_line(obj: Any, line: int, fmt: DataFormat, format_line: int | None = None) -> Record:
    """One decoded JSON line of a file in format `fmt` (decided by line `format_line`, when known) -> its record;
    raises LineError."""
    seen = detect_format(obj)
    if seen is not None and seen != fmt and {seen, fmt} == {DataFormat.CHAT, DataFormat.REINFORCEMENT}:
        return _chat_or_reinforcement(obj, line, fmt, format_line)
    if seen is not None and seen != fmt:
        key = REQUIRED_KEY[fmt]
        raise LineError(
            line,
            f"missing '{key}': the file is in the {fmt.value} format (decided by its first line), "
            f"but this line looks like the {seen.value} format (keys: {', '.join(sorted(obj))})",
            key,
        )
    return PARSERS[fmt](obj, line)


def _chat_or_reinforcement(obj: dict[str, Any], line: int, fmt: DataFormat, format_line: int | None) -> Record:
    """A ``messages`` line that looks like the other of the chat and reinforcement formats, in a file of ``fmt``.

    In a chat file it is still read as chat: a conversation that goes on after its last assistant reply trains on
    that reply, as it always did; only one with no assistant reply to learn from is refused, saying that it is
    shaped like a reinforcement line. In a reinforcement file a line that ends with an assistant reply is refused.
    """
    decided = f"decided by line {format_line}" if format_line else "decided by its first line"
    messages = obj["messages"]
    if fmt is DataFormat.CHAT:
        try:
            return parse_chat_line(obj, line)
        except _NoAssistant as e:
            raise LineError(
                line,
                f"{e.message}: it ends with a {messages[-1]['role']} message, as a line of the "
                f"{DataFormat.REINFORCEMENT.label} format does (a prompt the model answers), but the file is in the "
                f"{DataFormat.CHAT.label} format, {decided}, which ends with an assistant reply",
                e.field,
            ) from None
    if not _ends_with_assistant(obj):  # malformed: the reinforcement parser says how
        return parse_reinforcement_line(obj, line)
    raise LineError(
        line,
        f"this line ends with an assistant reply (the {DataFormat.CHAT.label} format), but the file is in the "
        f"{DataFormat.REINFORCEMENT.label} format, {decided}, which has no assistant reply at its end (the model "
        "answers after the last message)",
        f"messages[{len(messages) - 1}].role",
    )
