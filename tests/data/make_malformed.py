"""Write the malformed training-file corpus: tests/data/malformed/*.jsonl and expected.json.

Run from the repository root: ``python tests/data/make_malformed.py``. Each case is a small file with a few
valid lines (which decide the file's format) and one bad line; expected.json maps the file name to the error
validation must report: {"code", "line", "field", "contains"}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent / "malformed"
TRAIN = "invalid_training_file"


def j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def chat(i: int = 0) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}


def with_msgs(*msgs: dict[str, Any], **extra: Any) -> bytes:
    return j({"messages": list(msgs), **extra})


U = {"role": "user", "content": "What is the weather?"}
A = {"role": "assistant", "content": "Sunny."}


def call(cid: str = "call_1", args: Any = '{"city": "Paris"}') -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": "weather", "arguments": args}}


def pref(i: int = 0, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "input": {"messages": [{"role": "user", "content": f"Q{i}?"}]},
        "preferred_output": [{"role": "assistant", "content": "Good."}],
        "non_preferred_output": [{"role": "assistant", "content": "Bad."}],
    }
    d.update(over)
    return {k: v for k, v in d.items() if v is not None}


def alpaca(i: int = 0, **over: Any) -> dict[str, Any]:
    d = {"instruction": f"Say {i}.", "input": "", "output": f"{i}"}
    d.update(over)
    return {k: v for k, v in d.items() if v is not None}


def sharegpt(*turns: tuple[str, Any]) -> dict[str, Any]:
    return {"conversations": [{"from": f, "value": v} for f, v in turns]}


GOOD_SG = sharegpt(("human", "Hi?"), ("gpt", "Hello."))
GOOD_TRL = {"prompt": "Q?", "chosen": "Good.", "rejected": "Bad."}
GOOD_PC = {"prompt": "Q?", "completion": "A."}
GOOD_RFT = {"messages": [{"role": "user", "content": "Say the password."}], "reference_answer": "swordfish"}


def rft(*msgs: dict[str, Any], **extra: Any) -> bytes:
    return j({"messages": list(msgs), "reference_answer": "swordfish", **extra})


# name -> (lines of the file, code, line, field, substring of the message)
CASES: dict[str, tuple[list[bytes], str, int | None, str | None, str]] = {}


def case(name: str, bad: bytes, field: str | None, contains: str, good: Any = None, at: int = 3) -> None:
    """A file of 4 good lines of `good` (chat by default) with `bad` as line `at`."""
    lines = [j(good if good is not None else chat(i)) for i in range(4)]
    lines.insert(at - 1, bad)
    CASES[name] = (lines, TRAIN, at, field, contains)


# ---- lines that are not JSON objects
case("invalid_json", b'{"messages": [', None, "invalid JSON")
case("trailing_comma", b'{"messages": [],}', None, "invalid JSON", at=2)
case("not_utf8", b'{"messages": "\xff\xfe"}', None, "not valid UTF-8")
case("top_level_array", j([chat()]), None, "must be a JSON object")
case("top_level_string", j("hello"), None, "must be a JSON object", at=1)
# ---- chat structure
case("missing_messages", j({"prompt": "x"}), "messages", "missing 'messages'")
case("unknown_keys_only", j({"text": "x"}), "messages", "missing 'messages'", at=5)
case("messages_not_list", j({"messages": {"role": "user"}}), "messages", "non-empty list")
case("messages_empty", j({"messages": []}), "messages", "non-empty list")
case("message_not_object", with_msgs("hi", A), "messages[0]", "message must be an object")
case("unknown_role", with_msgs({"role": "wizard", "content": "x"}, A), "messages[0].role", "unknown role 'wizard'")
case("missing_role", with_msgs({"content": "x"}, A), "messages[0].role", "unknown role None")
case("missing_content", with_msgs({"role": "user"}, A), "messages[0].content", "missing 'content'")
case("null_content_user", with_msgs({"role": "user", "content": None}, A), "messages[0].content", "may be null only")
case("content_number", with_msgs(U, {"role": "assistant", "content": 42}), "messages[1].content", "must be a string")
case(
    "content_image_part",
    with_msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}, A),
    "messages[0].content[0]",
    "only text content parts",
)
case("weight_two", with_msgs(U, {**A, "weight": 2}), "messages[1].weight", "must be 0 or 1")
case("weight_bool", with_msgs(U, {**A, "weight": True}), "messages[1].weight", "must be 0 or 1")
case("weight_on_user", with_msgs({**U, "weight": 1}, A), "messages[0].weight", "assistant messages only")
case("no_assistant", with_msgs(U), "messages", "no assistant")
case("system_only", with_msgs({"role": "system", "content": "Be nice."}), "messages", "no assistant")
case("all_weight_zero", with_msgs(U, {**A, "weight": 0}), "messages", "weight 0")
# ---- tools
case(
    "tool_call_without_result",
    with_msgs(U, {"role": "assistant", "content": None, "tool_calls": [call()]}, A),
    "messages[1].tool_calls[0]",
    "has no tool result",
)
case(
    "tool_call_result_missing_at_end",
    with_msgs(
        U,
        {"role": "assistant", "content": None, "tool_calls": [call("c1"), call("c2")]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ),
    "messages[1].tool_calls[1]",
    "'c2' has no tool result",
)
case(
    "tool_result_without_call",
    with_msgs(U, {"role": "tool", "tool_call_id": "call_9", "content": "18C"}, A),
    "messages[1].tool_call_id",
    "does not answer an earlier tool call",
)
case(
    "tool_result_missing_id",
    with_msgs(U, {"role": "assistant", "content": None, "tool_calls": [call()]}, {"role": "tool", "content": "x"}, A),
    "messages[2].tool_call_id",
    "needs a string 'tool_call_id'",
)
case(
    "tool_calls_not_list",
    with_msgs(U, {"role": "assistant", "content": None, "tool_calls": call()}, A),
    "messages[1].tool_calls",
    "non-empty list",
)
case(
    "tool_call_missing_id",
    with_msgs(
        U,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        A,
    ),
    "messages[1].tool_calls[0].id",
    "non-empty string 'id'",
)
case(
    "tool_call_wrong_type",
    with_msgs(U, {"role": "assistant", "content": None, "tool_calls": [{**call(), "type": "retrieval"}]}, A),
    "messages[1].tool_calls[0].type",
    "must be 'function'",
)
case(
    "arguments_object",
    with_msgs(U, {"role": "assistant", "content": None, "tool_calls": [call(args={"city": "Paris"})]}, A),
    "messages[1].tool_calls[0].function.arguments",
    "must be a JSON string",
)
case(
    "arguments_bad_json",
    with_msgs(U, {"role": "assistant", "content": None, "tool_calls": [call(args="{city: Paris")]}, A),
    "messages[1].tool_calls[0].function.arguments",
    "not valid JSON",
)
case(
    "tool_calls_on_user",
    with_msgs({**U, "tool_calls": [call()]}, A),
    "messages[0].tool_calls",
    "only assistant messages",
)
case("tools_not_list", with_msgs(U, A, tools={"type": "function"}), "tools", "'tools' must be a list")
case(
    "function_result_without_call",
    with_msgs(U, {"role": "function", "name": "weather", "content": "18C"}, A),
    "messages[1].name",
    "does not answer an earlier function_call",
)
case("parallel_tool_calls_string", with_msgs(U, A, parallel_tool_calls="no"), "parallel_tool_calls", "boolean")
# ---- file-level line problems
CASES["blank_line_middle"] = ([j(chat(0)), j(chat(1)), b"", j(chat(2))], TRAIN, 3, None, "blank line")
case("mixed_chat_then_alpaca", j(alpaca()), "messages", "looks like the alpaca format")
case("mixed_alpaca_then_chat", j(chat()), "output", "looks like the chat format", good=alpaca())
case("mixed_pref_then_trl", j(GOOD_TRL), "input", "looks like the trl_preference format", good=pref())
# ---- OpenAI preference
case("pref_missing_preferred", j(pref(preferred_output=None)), "preferred_output", "missing 'preferred_output'",
     good=pref())  # fmt: skip
case(
    "pref_two_preferred",
    j(pref(preferred_output=[{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}])),
    "preferred_output",
    "exactly one assistant message",
    good=pref(),
)
case(
    "pref_preferred_not_assistant",
    j(pref(preferred_output=[{"role": "user", "content": "a"}])),
    "preferred_output[0].role",
    "must be an assistant message",
    good=pref(),
)
case("pref_missing_input_messages", j(pref(input={"tools": []})), "input.messages", "missing 'messages'", good=pref())
case(
    "pref_input_ends_with_assistant",
    j(pref(input={"messages": [U, A]})),
    "input.messages[1].role",
    "must not end with an assistant",
    good=pref(),
)
case("pref_empty_rejected", j(pref(non_preferred_output=[{"role": "assistant", "content": ""}])),
     "non_preferred_output[0].content", "empty assistant content", good=pref())  # fmt: skip
# ---- legacy prompt/completion
case("completion_not_string", j({"prompt": "Q?", "completion": 7}), "completion", "must be a string", good=GOOD_PC)
case("completion_missing", j({"prompt": "Q?"}), "completion", "missing 'completion'", good=GOOD_PC)
case("completion_empty", j({"prompt": "Q?", "completion": "  "}), "completion", "is empty", good=GOOD_PC)
# ---- alpaca
case("alpaca_missing_output", j(alpaca(output=None)), "output", "missing 'output'", good=alpaca())
case("alpaca_missing_instruction", j(alpaca(instruction=None)), "instruction", "missing 'instruction'",
     good=alpaca())  # fmt: skip
case("alpaca_input_number", j(alpaca(input=3)), "input", "must be a string", good=alpaca())
# ---- sharegpt
case("sharegpt_unknown_from", j(sharegpt(("human", "Hi"), ("robot", "Hello"))), "conversations[1].from",
     "unknown 'from' value 'robot'", good=GOOD_SG)  # fmt: skip
case("sharegpt_empty_value", j(sharegpt(("human", "Hi"), ("gpt", ""))), "conversations[1].value", "empty 'value'",
     good=GOOD_SG)  # fmt: skip
case("sharegpt_not_list", j({"conversations": "hi"}), "conversations", "non-empty list", good=GOOD_SG)
case("sharegpt_no_gpt", j(sharegpt(("human", "Hi"))), "conversations", "no assistant", good=GOOD_SG)
# ---- TRL preference
case("trl_missing_rejected", j({"prompt": "Q?", "chosen": "Good."}), "rejected", "missing 'rejected'", good=GOOD_TRL)
case("trl_chosen_number", j({**GOOD_TRL, "chosen": 1}), "chosen", "string or a list of messages", good=GOOD_TRL)
case(
    "trl_chosen_not_assistant",
    j({"prompt": "Q?", "chosen": [{"role": "user", "content": "x"}], "rejected": "Bad."}),
    "chosen[0].role",
    "must end with an assistant message",
    good=GOOD_TRL,
)
case(
    "trl_implicit_prompt_differs",
    j({"chosen": [U, A], "rejected": [{**U, "content": "Other?"}, {**A, "content": "Rain."}]}),
    "rejected",
    "same prompt messages",
    good=GOOD_TRL,
)
# ---- OpenAI reinforcement (RFT): the last message is the user's (or a tool's), other keys are grader data
case("rft_ends_with_assistant", rft(U, A), "messages[1].role", "ends with an assistant reply", good=GOOD_RFT)
case("rft_missing_messages", j({"reference_answer": "x"}), "messages", "missing 'messages'", good=GOOD_RFT)
case("rft_messages_empty", rft(), "messages", "non-empty list", good=GOOD_RFT)
case("rft_unknown_role", rft({"role": "wizard", "content": "x"}), "messages[0].role", "unknown role 'wizard'",
     good=GOOD_RFT)  # fmt: skip
case("rft_function_role", rft(U, {"role": "function", "name": "weather", "content": "18C"}), "messages[1].role",
     "no 'function' role", good=GOOD_RFT)  # fmt: skip
case("rft_tools_not_list", rft(U, tools={"type": "function"}), "tools", "'tools' must be a list", good=GOOD_RFT)
case("rft_tool_without_name", rft(U, tools=[{"type": "function", "function": {}}]), "tools[0].function",
     "non-empty 'name'", good=GOOD_RFT)  # fmt: skip
case(
    "rft_tool_call_without_result",
    rft(
        U,
        {"role": "assistant", "content": None, "tool_calls": [call("c1"), call("c2")]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    ),
    "messages[1].tool_calls[1]",
    "'c2' has no tool result",
    good=GOOD_RFT,
)
case("mixed_chat_then_rft", j(GOOD_RFT), "messages", "but the file is in the fine-tune-chat format, decided by line 1")
# ---- whole-file problems
CASES["too_few_examples"] = (
    [j(chat(i)) for i in range(3)],
    "invalid_n_examples",
    None,
    None,
    "has 3 example(s), but must have at least 10",
)
CASES["empty_file"] = ([], "invalid_n_examples", None, None, "has 0 example(s)")
CASES["only_bad_lines"] = ([b"nope", b"[]"], TRAIN, 1, None, "invalid JSON")


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for old in HERE.glob("*.jsonl"):
        old.unlink()
    expected = {}
    for name, (lines, code, line, field, contains) in sorted(CASES.items()):
        (HERE / f"{name}.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
        expected[f"{name}.jsonl"] = {"code": code, "line": line, "field": field, "contains": contains}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(f"wrote {len(expected)} files to {HERE}")


if __name__ == "__main__":
    main()
