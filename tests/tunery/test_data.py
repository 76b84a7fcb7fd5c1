"""Training-data formats: detection, normalization into the trainer's records, and method/format fit.

Supervised formats (OpenAI chat, legacy prompt/completion, alpaca, sharegpt) normalize to ChatRecord; preference
formats (OpenAI DPO, TRL prompt/chosen/rejected) to PreferenceRecord; OpenAI's reinforcement format to
ReinforcementRecord.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scheduler.validation import check_chunks, check_method_fit
from tests.conftest import TINY
from tests.trainer_fixtures import reporting_server, smol_tokenizer
from trainer.chat import ChatTokenizer
from trainer.data_files import read_chat_file, read_records
from trainer.errors import TrainerError
from tunery.data import ChatRecord, DataFormat, PreferenceRecord, ReinforcementRecord
from tunery.data_jsonl import parse_jsonl
from tunery.data_parsers import detect_format
from tunery.jobspec import DataFile
from tunery.storage import LocalObjectStore

__all__ = ["reporting_server", "smol_tokenizer"]  # fixtures (tiny_model_dir comes from conftest.py)


def jsonl(objs: list[Any]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def pairs(record: ChatRecord) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in record.messages]


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
TOOL_CHAT = {
    "messages": [
        {"role": "developer", "content": "You can look up the weather."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "assistant", "content": "It is 18C and sunny in Paris."},
    ],
    "tools": [WEATHER_TOOL],
    "parallel_tool_calls": False,
}

# format -> (one example line, the normalized (role, content) pairs)
SUPERVISED: dict[DataFormat, tuple[dict[str, Any], list[tuple[str, str]]]] = {
    DataFormat.CHAT: (
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello.", "weight": 1}]},
        [("user", "Hi?"), ("assistant", "Hello.")],
    ),
    DataFormat.COMPLETION: ({"prompt": "2+2=", "completion": " 4"}, [("user", "2+2="), ("assistant", " 4")]),
    DataFormat.ALPACA: (
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        [("user", "Translate to French.\n\ncat"), ("assistant", "chat")],
    ),
    DataFormat.SHAREGPT: (
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi?"},
                {"from": "gpt", "value": "Hello."},
                {"from": "user", "value": "Bye?"},
                {"from": "model", "value": "Bye."},
            ]
        },
        [("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."), ("user", "Bye?"), ("assistant", "Bye.")],
    ),
}
PREFERENCE: dict[DataFormat, dict[str, Any]] = {
    DataFormat.PREFERENCE: {
        "input": {"messages": [{"role": "user", "content": "Capital of France?"}], "tools": []},
        "preferred_output": [{"role": "assistant", "content": "Paris."}],
        "non_preferred_output": [{"role": "assistant", "content": "Lyon."}],
    },
    DataFormat.TRL_PREFERENCE: {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
}
USER = {"role": "user", "content": "Say the password."}
RFT = {"messages": [USER], "reference_answer": "swordfish"}
# A reinforcement line with everything: a tool call and its result before the end, tools, and item fields (nested
# values, and the keys that are reserved in chat but not here).
RFT_FULL = {
    "messages": [*TOOL_CHAT["messages"][:-1], {"role": "user", "content": "And in Lyon?"}],
    "tools": [WEATHER_TOOL],
    "reference_answer": {"donor_bond_counts": 5, "cities": ["Paris", {"name": "Lyon", "temp": None}]},
    "parallel_tool_calls": "not a boolean: grader data",
    "functions": 3,
    "id": 7,
}


@pytest.mark.parametrize("fmt", list(SUPERVISED))
def test_supervised_formats_normalize_to_chat_records(fmt):
    line, want = SUPERVISED[fmt]
    result = parse_jsonl([jsonl([line] * 3)])
    assert result.n_errors == 0, result.errors
    assert result.format == fmt and result.kind == "supervised" and result.format_line == 1
    assert [r.line for r in result.records] == [1, 2, 3]
    record = result.records[0]
    assert isinstance(record, ChatRecord)
    assert pairs(record) == want


def test_alpaca_without_input_and_chunked_stream():
    data = jsonl(
        [{"instruction": "Say hi.", "input": "", "output": "Hi."}, {"instruction": "Say yo.", "output": "Yo."}]
    )
    result = parse_jsonl([data[i : i + 7] for i in range(0, len(data), 7)])  # lines split across chunks
    assert result.n_errors == 0
    assert [pairs(r) for r in result.records if isinstance(r, ChatRecord)] == [
        [("user", "Say hi."), ("assistant", "Hi.")],
        [("user", "Say yo."), ("assistant", "Yo.")],
    ]


@pytest.mark.parametrize(
    "line",
    [
        PREFERENCE[DataFormat.PREFERENCE],
        {  # the older field names
            "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
            "preferred_completion": [{"role": "assistant", "content": "Paris."}],
            "non_preferred_completion": [{"role": "assistant", "content": "Lyon."}],
        },
        PREFERENCE[DataFormat.TRL_PREFERENCE],
        {  # TRL conversational, explicit prompt
            "prompt": [{"role": "user", "content": "Capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon."}],
        },
        {  # TRL conversational, implicit prompt
            "chosen": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Lyon."}],
        },
    ],
)
def test_preference_formats_normalize_to_preference_records(line):
    result = parse_jsonl([jsonl([line])])
    assert result.n_errors == 0, result.errors
    assert result.kind == "preference"
    (record,) = result.records
    assert isinstance(record, PreferenceRecord)
    assert [(m.role, m.content) for m in record.prompt] == [("user", "Capital of France?")]
    assert (record.chosen.role, record.chosen.content) == ("assistant", "Paris.")
    assert (record.rejected.role, record.rejected.content) == ("assistant", "Lyon.")


def test_tool_calls_are_kept_and_rendered_for_templates():
    result = parse_jsonl([jsonl([TOOL_CHAT])])
    assert result.n_errors == 0, result.errors
    (record,) = result.records
    assert isinstance(record, ChatRecord)
    assert record.tools == [WEATHER_TOOL] and record.parallel_tool_calls is False
    call_msg, tool_msg = record.messages[2], record.messages[3]
    assert call_msg.content == "" and call_msg.tool_calls is not None
    assert call_msg.tool_calls[0]["function"]["arguments"] == '{"city": "Paris"}'
    assert tool_msg.tool_call_id == "call_1"
    d = call_msg.as_template_dict()
    assert d["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # an object, for chat templates
    assert tool_msg.as_template_dict() == {"role": "tool", "content": "18C and sunny", "tool_call_id": "call_1"}
    assert record.messages[0].as_template_dict()["role"] == "system"


def test_deprecated_functions_normalize_to_tools():
    line = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": "{}"}},
            {"role": "function", "name": "weather", "content": "18C"},
            {"role": "assistant", "content": "18C."},
        ],
        "functions": [{"name": "weather", "parameters": {"type": "object"}}],
    }
    (record,) = parse_jsonl([jsonl([line])]).records
    assert isinstance(record, ChatRecord)
    assert record.tools == [{"type": "function", "function": line["functions"][0]}]  # type: ignore[index]
    call = record.messages[1].tool_calls
    assert call is not None and call[0]["function"] == {"name": "weather", "arguments": "{}"}
    assert (record.messages[2].role, record.messages[2].tool_call_id) == ("tool", call[0]["id"])


def test_tool_call_masking_trains_the_final_answer(smol_tokenizer: Any):
    (record,) = parse_jsonl([jsonl([TOOL_CHAT])]).records
    assert isinstance(record, ChatRecord)
    ex = ChatTokenizer(smol_tokenizer).tokenize(record)
    trained = smol_tokenizer.decode([t for t, m in zip(ex.input_ids, ex.assistant_masks, strict=True) if m])
    assert "It is 18C and sunny in Paris.<|im_end|>" in trained
    for untrained in ("Weather in Paris?", "18C and sunny<|im_end|>", "You can look up"):
        assert untrained not in trained
    # The template renders tool-free text the same way with and without the tools argument.
    chat = ChatTokenizer(smol_tokenizer)
    assert chat.render(record.messages, tools=record.tools).endswith("It is 18C and sunny in Paris.<|im_end|>\n")


def test_chat_and_reinforcement_are_told_apart_by_the_last_message():
    assistant = {"role": "assistant", "content": "swordfish"}
    assert detect_format({"messages": [USER, assistant]}) == DataFormat.CHAT
    assert detect_format({"messages": [USER, assistant, USER]}) == DataFormat.REINFORCEMENT
    assert detect_format(RFT) == DataFormat.REINFORCEMENT
    assert detect_format(RFT_FULL) == DataFormat.REINFORCEMENT
    assert detect_format({"messages": [USER, {"role": "tool", "content": "x"}]}) == DataFormat.REINFORCEMENT
    # Malformed messages are read as chat, as before (the chat parser says what is wrong).
    for messages in ([], None, "hi", [USER, "hi"], [{"role": "wizard", "content": "x"}]):
        assert detect_format({"messages": messages}) == DataFormat.CHAT
    assert (DataFormat.REINFORCEMENT.label, DataFormat.REINFORCEMENT.kind) == (
        "fine-tune-reinforcement",
        "reinforcement",
    )
    assert {f.kind for f in DataFormat} == {"supervised", "preference", "reinforcement"}


def test_reinforcement_file_parses_to_records_with_the_item():
    result = parse_jsonl([jsonl([RFT, RFT_FULL])])
    assert result.n_errors == 0, result.errors
    assert (result.format, result.kind, result.format_line, result.n_records) == (
        DataFormat.REINFORCEMENT,
        "reinforcement",
        1,
        2,
    )
    simple, full = result.records
    assert isinstance(simple, ReinforcementRecord) and isinstance(full, ReinforcementRecord)
    assert [(m.role, m.content) for m in simple.prompt] == [("user", "Say the password.")]
    assert (simple.item, simple.tools, simple.line) == ({"reference_answer": "swordfish"}, None, 1)
    assert full.item == {k: v for k, v in RFT_FULL.items() if k not in ("messages", "tools")}
    assert full.item["reference_answer"]["cities"][1] == {"name": "Lyon", "temp": None}
    assert full.tools == [WEATHER_TOOL] and full.line == 2
    assert [m.role for m in full.prompt] == ["developer", "user", "assistant", "tool", "user"]
    call = full.prompt[2].tool_calls
    assert call is not None and call[0]["id"] == "call_1" and full.prompt[3].tool_call_id == "call_1"
    # A weight on an assistant message is accepted (OpenAI's message schema has it) and means nothing here.
    weighted = {"messages": [USER, {"role": "assistant", "content": "Hm.", "weight": 0}, USER], "answer": "x"}
    (record,) = parse_jsonl([jsonl([weighted])]).records
    assert isinstance(record, ReinforcementRecord) and record.item == {"answer": "x"}


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        (
            {"messages": [USER, {"role": "assistant", "content": "swordfish"}]},
            "messages[1].role",
            "ends with an assistant reply",
        ),
        ({"reference_answer": "x"}, "messages", "missing 'messages'"),
        ({"messages": None, "reference_answer": "x"}, "messages", "missing 'messages'"),
        ({"messages": [], "reference_answer": "x"}, "messages", "'messages' must be a non-empty list"),
        ({"messages": {"role": "user"}}, "messages", "'messages' must be a non-empty list"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "messages[0].role", "unknown role 'narrator'"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "unknown role None"),
        (
            {"messages": [USER, {"role": "function", "name": "weather", "content": "18C"}]},
            "messages[1].role",
            "no 'function' role",
        ),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "must be a string"),
        ({**RFT, "tools": {"type": "function"}}, "tools", "'tools' must be a list"),
        ({**RFT, "tools": [{"type": "retrieval"}]}, "tools[0]", "of type 'function'"),
        ({**RFT, "tools": [{"type": "function", "function": {}}]}, "tools[0].function", "non-empty 'name'"),
        (
            {"messages": [USER, {"role": "tool", "tool_call_id": "call_9", "content": "18C"}]},
            "messages[1].tool_call_id",
            "does not answer an earlier tool call",
        ),
        ("just a string", None, "must be a JSON object"),
        ({"prompt": "Q?", "completion": "A."}, "messages", "looks like the completion format"),
    ],
)
def test_reinforcement_line_errors(line: Any, field: str | None, message: str):
    result = parse_jsonl([jsonl([RFT, line, RFT])])
    assert result.format == DataFormat.REINFORCEMENT and result.n_records == 2
    (error,) = result.errors
    assert (error.line, error.field) == (2, field), error
    assert message in error.message


def test_mixed_chat_and_reinforcement_files_say_what_happened():
    chat_line, _ = SUPERVISED[DataFormat.CHAT]
    result = parse_jsonl([jsonl([RFT, chat_line])])
    (error,) = result.errors
    assert (error.line, error.field) == (2, "messages[1].role")
    assert error.message == (
        "this line ends with an assistant reply (the fine-tune-chat format), but the file is in the "
        "fine-tune-reinforcement format, decided by line 1, which has no assistant reply at its end (the model "
        "answers after the last message)"
    )
    result = parse_jsonl([b"\n", b"[1]\n", jsonl([chat_line, RFT])])  # the format is decided by line 3
    assert [e.line for e in result.errors] == [1, 2, 4] and result.format_line == 3
    error = result.errors[-1]
    assert error.field == "messages"
    assert error.message == (
        "example has no assistant message to learn from: it ends with a user message, as a line of the "
        "fine-tune-reinforcement format does (a prompt the model answers), but the file is in the fine-tune-chat "
        "format, decided by line 3, which ends with an assistant reply"
    )
    # A chat line that goes on after its assistant reply is still a chat example in a chat file, as it always was.
    goes_on = {"messages": [USER, {"role": "assistant", "content": "swordfish"}, USER]}
    result = parse_jsonl([jsonl([chat_line, goes_on])])
    assert result.n_errors == 0 and all(isinstance(r, ChatRecord) for r in result.records)


def test_method_fit():
    chat = check_method_fit(DataFormat.CHAT, "file-abc", "dpo")
    assert chat is not None and chat.to_json() == {
        "code": "invalid_training_file",
        "param": "training_file",
        "message": "Input file file-abc is in the fine-tune-chat format, but the specified fine-tuning job is not "
        "using 'supervised' as the training method (provided method=dpo).",
    }
    assert check_method_fit(DataFormat.ALPACA, "file-abc", "dpo") is not None
    pref = check_method_fit(DataFormat.PREFERENCE, "file-abc", "supervised")
    assert pref is not None and "not using 'dpo' as the training method (provided method=supervised)" in pref.message
    for fmt in SUPERVISED:
        assert check_method_fit(fmt, "f", "supervised") is None
    for fmt in PREFERENCE:
        assert check_method_fit(fmt, "f", "dpo") is None
    # Through the whole file check: a chat file given to a dpo job.
    line, _ = SUPERVISED[DataFormat.SHAREGPT]
    check = check_chunks([jsonl([line] * 12)], "file-abc", "training_file", method="dpo")
    assert check.error is not None and "is in the sharegpt format" in (check.error.message or "")
    assert (
        check_chunks([jsonl([PREFERENCE[DataFormat.TRL_PREFERENCE]] * 12)], "f", "training_file", "dpo").error is None
    )
    # Reinforcement files feed reinforcement jobs, and only them.
    rft = check_method_fit(DataFormat.REINFORCEMENT, "file-abc", "supervised")
    assert rft is not None and rft.message == (
        "Input file file-abc is in the fine-tune-reinforcement format, but the specified fine-tuning job is not "
        "using 'reinforcement' as the training method (provided method=supervised)."
    )
    assert check_method_fit(DataFormat.REINFORCEMENT, "file-abc", "dpo") is not None
    assert check_method_fit(DataFormat.REINFORCEMENT, "file-abc", "reinforcement") is None
    for fmt in (DataFormat.CHAT, DataFormat.PREFERENCE):
        wrong = check_method_fit(fmt, "file-abc", "reinforcement")
        assert wrong is not None and f"is in the {fmt.label} format" in wrong.message
        assert "(provided method=reinforcement)" in wrong.message
    check = check_chunks([jsonl([RFT] * 12)], "file-abc", "training_file", method="supervised")
    assert check.error is not None and check.error.code == "invalid_training_file"
    assert "is in the fine-tune-reinforcement format" in (check.error.message or "")
    ok = check_chunks([jsonl([RFT_FULL] * 12)], "file-abc", "training_file", method="reinforcement")
    assert ok.error is None and (ok.n_examples, ok.format, ok.n_duplicates) == (12, DataFormat.REINFORCEMENT, 11)


def test_trainer_reads_every_supervised_format_and_rejects_preference(tmp_path: Path, smol_tokenizer: Any):
    store = LocalObjectStore(tmp_path)
    chat = ChatTokenizer(smol_tokenizer)
    for fmt, (line, _) in SUPERVISED.items():
        store.put_bytes(f"files/{fmt.value}", jsonl([line] * 3))
        read = read_chat_file(store, DataFile(file_id=f"file-{fmt.value}", key=f"files/{fmt.value}"), "training_file")
        assert len(read.records) == 3
        tokenized = chat.tokenize_all(read.records, 256)
        assert len(tokenized.examples) == 3 and tokenized.n_trained_tokens > 0
    for fmt, line in PREFERENCE.items():
        store.put_bytes(f"files/{fmt.value}", jsonl([line] * 3))
        with pytest.raises(TrainerError) as e:
            read_chat_file(store, DataFile(file_id="file-p", key=f"files/{fmt.value}"), "training_file")
        assert e.value.code == "invalid_training_file"
        assert "preference data" in str(e.value)


def test_trainer_reads_reinforcement_files_and_only_for_reinforcement(tmp_path: Path):
    store = LocalObjectStore(tmp_path)
    store.put_bytes("files/rft", jsonl([RFT, RFT_FULL]))
    rft_file = DataFile(file_id="file-rft", key="files/rft")
    read = read_records(store, rft_file, "training_file", "reinforcement")
    assert [type(r) for r in read.records] == [ReinforcementRecord, ReinforcementRecord]
    assert read.records[1].item["reference_answer"]["donor_bond_counts"] == 5
    for kind, needs in (("supervised", "supervised data"), ("preference", "preference data")):
        with pytest.raises(TrainerError) as e:
            read_records(store, rft_file, "training_file", kind)
        assert e.value.code == "invalid_training_file"
        assert str(e.value).startswith(
            "training_file file-rft is in the fine-tune-reinforcement format (reinforcement data), but this job's "
            f"method needs {needs}"
        )
    line, _ = SUPERVISED[DataFormat.CHAT]
    store.put_bytes("files/chat", jsonl([line] * 3))
    with pytest.raises(TrainerError) as e:
        read_records(store, DataFile(file_id="file-chat", key="files/chat"), "validation_file", "reinforcement")
    assert e.value.code == "invalid_validation_file"
    assert str(e.value) == (
        "validation_file file-chat is in the fine-tune-chat format (supervised data), but this job's method needs "
        "reinforcement data: messages per line that end before the model's answer (no final assistant message), "
        "with the fields graders read"
    )


def test_formats_through_the_api(tiny_server_factory: Any):
    server = tiny_server_factory(max_concurrent_runs=0)  # validation runs, nothing trains
    jobs = {}
    for fmt, (line, _) in SUPERVISED.items():
        f = server.client.files.create(file=(f"{fmt.value}.jsonl", jsonl([line] * 10)), purpose="fine-tune")
        jobs[fmt] = server.client.fine_tuning.jobs.create(model=TINY, training_file=f.id).id
    pref_files = {}
    for fmt, line in PREFERENCE.items():
        f = server.client.files.create(file=(f"{fmt.value}.jsonl", jsonl([line] * 10)), purpose="fine-tune")
        pref_files[fmt] = f.id
        jobs[fmt] = server.client.fine_tuning.jobs.create(model=TINY, training_file=f.id).id
    for fmt in SUPERVISED:
        job = server.wait_job(jobs[fmt], {"queued", "failed"}, timeout=30)
        assert job.status == "queued", (fmt, job.error)
        assert job.trained_tokens is None
    for fmt in PREFERENCE:
        job = server.wait_job(jobs[fmt], {"queued", "failed"}, timeout=30)
        assert job.status == "failed"
        assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
        assert job.error.message == (
            f"Input file {pref_files[fmt]} is in the {fmt.label} format, but the specified fine-tuning job is not "
            "using 'dpo' as the training method (provided method=supervised)."
        )


@pytest.mark.integration
def test_trainer_trains_on_each_supervised_non_chat_format(tmp_path: Path, tiny_model_dir: Path, reporting_server: Any):
    """One real step (tiny model, 10 examples, batch 10, 1 epoch) per format; the runs go side by side."""
    from tests.trainer.test_run import setup_job, start_trainer, wait

    servicer, address = reporting_server
    procs = {}
    for fmt in (DataFormat.COMPLETION, DataFormat.ALPACA, DataFormat.SHAREGPT):
        line, _ = SUPERVISED[fmt]
        train = jsonl([line] * 10)
        kw = {"job_id": f"ftjob-{fmt.value}", "n_epochs": 1, "batch_size": 10, "max_seq_length": 64}
        setup_job(tmp_path / fmt.value, tiny_model_dir, address, train, **kw)
        procs[fmt] = start_trainer(tmp_path / fmt.value / "objects")
    for fmt, proc in procs.items():
        out = wait(proc, timeout=300)
        assert proc.returncode == 0, (fmt, out[-3000:])
    finished = servicer.of("Finished")
    assert len(finished) == 3 and all(f.succeeded for f in finished)
