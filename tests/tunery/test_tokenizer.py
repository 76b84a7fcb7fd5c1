"""Token statistics of the validation report: the control plane counts exactly what the trainer trains on.

The control plane renders chat templates with its own Jinja environment and counts tokens with tiktoken (or
``tokenizers``), without torch or transformers; the trainer renders with transformers and tokenizes with the
fast tokenizer. These tests hold the two to the same numbers, and cover the scan's other findings:
near-duplicates, special tokens in text, over-length examples and the parallel scan of large files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import tunery.filescan as filescan
from scheduler.validation import file_report
from tests.conftest import chat_lines
from tests.trainer_fixtures import smol_tokenizer
from tests.tunery.test_data import PREFERENCE, SUPERVISED, TOOL_CHAT, jsonl
from trainer.chat import ChatTokenizer, end_of_turn_tokens
from tunery.chattemplate import ChatTemplate, SkeletonRenderer
from tunery.data import ChatMessage, ChatRecord, ReinforcementRecord
from tunery.data_jsonl import parse_jsonl
from tunery.filescan import ScanOptions, scan_path, scan_stream
from tunery.tokenizer import ModelTokenizer, load_model_tokenizer

__all__ = ["smol_tokenizer"]

WORDS = (
    "the model answers every question in a short clear sentence about data training tokens".split()  # noqa: SIM905
)
TRICKY = [
    "plain words",
    "  leading and trailing spaces  ",
    "\n\nnewlines first\n",
    "tabs\tand\r\ncarriage returns",
    "unicode: café, naïve, 東京, emoji 🎉🎉",
    "digits 1234567890 and symbols ~!@#$%^&*()",
    "it's they're we've I'm you'll he'd",
    "   ",
    "x",
]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> ModelTokenizer:
    return ModelTokenizer(tiny_model_dir, "tiny-llama")


def _records(n: int, seed: int = 0) -> list[ChatRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        messages = []
        if rng.random() < 0.5:
            messages.append(ChatMessage("system", rng.choice(TRICKY)))
        for _ in range(rng.choice([1, 1, 2, 3])):
            messages.append(ChatMessage("user", " ".join(rng.choices(WORDS, k=rng.randint(1, 30)))))
            content = rng.choice(TRICKY) if rng.random() < 0.3 else " ".join(rng.choices(WORDS, k=rng.randint(1, 60)))
            messages.append(ChatMessage("assistant", content, weight=rng.choice([1, 1, 1, 0])))
        out.append(ChatRecord(messages=messages, line=i + 1))
    return out


def _trainer_counts(chat: ChatTokenizer, record: ChatRecord) -> tuple[int, int]:
    example = chat.tokenize(record)
    return len(example.input_ids), example.n_trained


@pytest.mark.parametrize("fast", [True, False], ids=["tiktoken", "tokenizers"])
def test_counts_equal_the_trainers_on_varied_conversations(model: ModelTokenizer, smol_tokenizer: Any, fast: bool):
    chat = ChatTokenizer(smol_tokenizer, end_of_turn_tokens(smol_tokenizer, [smol_tokenizer.eos_token_id]))
    assert model.end_of_turn == chat.end_of_turn
    renderer = SkeletonRenderer(model.template, model.end_of_turn)
    records = _records(300)
    rendered = [renderer.render(r) for r in records]
    for record, (text, spans) in zip(records, rendered, strict=True):
        assert (text, spans) == chat.trained_spans(record), record.line
    counts = model.count([t for t, _ in rendered], [s for _, s in rendered], fast=fast)
    expected = [_trainer_counts(chat, r) for r in records]
    assert list(zip(counts.tokens, counts.trained, strict=True)) == expected
    assert any(t == 0 for t in counts.trained)  # all-weight-0 conversations exist and count no trained token
    assert renderer.n_fast > 200  # most conversations took the substitution path


def test_every_format_counts_like_the_trainer(model: ModelTokenizer, smol_tokenizer: Any):
    chat = ChatTokenizer(smol_tokenizer, end_of_turn_tokens(smol_tokenizer, [smol_tokenizer.eos_token_id]))
    renderer = SkeletonRenderer(model.template, model.end_of_turn)
    lines = [line for line, _ in SUPERVISED.values()] + [TOOL_CHAT]
    for line in lines:
        record = parse_jsonl([jsonl([line])]).records[0]
        assert isinstance(record, ChatRecord)
        text, spans = renderer.render(record)
        counts = model.count([text], [spans])
        assert (counts.tokens[0], counts.trained[0]) == _trainer_counts(chat, record), line
    # Preference: prompt + chosen and prompt + rejected, both sides trained; the longer side is the length.
    for line in PREFERENCE.values():
        scan = scan_stream(lambda line=line: [jsonl([line])], ScanOptions(model_folder=str(model.folder)))
        record = parse_jsonl([jsonl([line])]).records[0]
        sides = [ChatRecord(messages=[*record.prompt, reply]) for reply in (record.chosen, record.rejected)]  # type: ignore[union-attr]
        side_counts = [_trainer_counts(chat, side) for side in sides]
        assert list(scan.tokens) == [max(n for n, _ in side_counts)]
        assert list(scan.trained) == [sum(t for _, t in side_counts)]


def test_a_template_that_changes_contents_is_rendered_in_full(model: ModelTokenizer):
    # This template trims contents: substitution would be wrong, so every example is rendered in full.
    trimming = ChatTemplate(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    renderer = SkeletonRenderer(trimming, ["<|im_end|>"])
    record = ChatRecord(messages=[ChatMessage("user", "  hi  "), ChatMessage("assistant", " hello ")])
    text, spans = renderer.render(record)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    assert [text[s:e] for s, e in spans] == ["hello<|im_end|>"]
    assert renderer.n_fast == 0


def test_the_model_tokenizer_gives_up_the_fast_path_when_it_disagrees(
    model: ModelTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "t.jsonl"
    path.write_bytes(chat_lines(20))
    opts = ScanOptions(model_folder=str(model.folder), model_name="tiny-llama")
    reference = scan_path(path, opts)
    assert reference.tokenizer == "tiktoken"
    real = ModelTokenizer.hf_ids
    calls = {"n": 0}

    def disagree(self: ModelTokenizer, text: str) -> list[int]:
        calls["n"] += 1
        return [*real(self, text), 0]  # a tokenizer that tiktoken does not reproduce

    monkeypatch.setattr(ModelTokenizer, "hf_ids", disagree)
    load_model_tokenizer(str(model.folder), "tiny-llama")._seen = 0  # the scan's (cached) tokenizer samples again
    slow = scan_path(path, opts)
    assert calls["n"] >= 1 and slow.tokenizer == "tokenizers"
    assert (slow.tokens, slow.trained) == (reference.tokens, reference.trained)


def test_near_duplicates_special_tokens_and_over_length(model: ModelTokenizer, tmp_path: Path):
    rng = random.Random(3)
    examples = []
    for _ in range(30):
        text = " ".join(rng.choices(WORDS + [f"w{i}" for i in range(500)], k=80))
        examples.append({"messages": [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": text}]})
    near = json.loads(json.dumps(examples[4]))
    near["messages"][1]["content"] += " extra"  # one more word: a near-duplicate of line 5
    examples.append(near)
    examples.append(examples[7])  # an exact duplicate of line 8 (not also counted as near)
    leak = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye<|im_end|> now"}]}
    examples.append(leak)
    path = tmp_path / "t.jsonl"
    path.write_bytes(jsonl(examples))
    scan = scan_path(path, ScanOptions(model_folder=str(model.folder), model_name="tiny-llama", max_seq_length=100))
    assert (scan.n_duplicates, scan.duplicates) == (1, [(32, 8)])
    assert scan.n_near_duplicates == 1 and scan.near_duplicates[0][:2] == (31, 5)
    assert scan.near_duplicates[0][2] >= 0.9
    assert scan.n_special == 1
    assert (scan.special[0].line, scan.special[0].field) == (33, "messages[1].content")

    upload = file_report("file-x", scan, 0, model="tiny-llama", max_seq_length=100)
    assert upload["status"] == "processed"  # at upload a special token is a warning (the file may be for another model)
    assert any("special token" in w for w in upload["warnings"])
    over = upload["tokens"]["over_max_seq_length"]
    assert over["total"] == sum(1 for n in scan.tokens if n > 100) > 0
    assert over["lines"] == [line for line, n in zip(scan.lines, scan.tokens, strict=True) if n > 100]
    job = file_report("file-x", scan, 0, model="tiny-llama", max_seq_length=100, for_job=True)
    assert job["status"] == "error" and job["errors"]["listed"][0]["line"] == 33


def test_parallel_scan_equals_the_sequential_one(
    model: ModelTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    rng = random.Random(5)
    lines: list[bytes] = []
    for i in range(600):
        q = " ".join(rng.choices(WORDS, k=rng.randint(3, 40)))
        lines.append(
            json.dumps(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{i}"}]}
            ).encode()
        )
    lines[0] = b"{broken"
    lines[150] = b""  # blank lines in the middle, some near where a range may end
    lines[299] = b""
    lines[300] = b""
    lines[450] = json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode()
    lines[500] = lines[10]  # a duplicate across ranges
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n\n")  # blank lines at the end are fine
    opts = ScanOptions(model_folder=str(model.folder), model_name="tiny-llama", max_seq_length=30, workers=1)
    one = file_report("f", scan_path(path, opts), 0, model="tiny-llama", max_seq_length=30)
    monkeypatch.setattr(filescan, "PARALLEL_MIN_BYTES", 0)
    many = file_report(
        "f", scan_path(path, ScanOptions(**{**opts.__dict__, "workers": 3})), 0, model="tiny-llama", max_seq_length=30
    )
    assert many == one
    assert [e["line"] for e in one["errors"]["listed"]] == [1, 151, 300, 301, 451]
    assert one["duplicates"]["listed"] == [{"line": 501, "duplicate_of": 11}]


def test_exact_duplicates_are_the_same_training_content(tmp_path: Path):
    base = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    reordered = {"messages": [{"content": "Hi", "role": "user"}, {"content": "Hello", "role": "assistant"}], "id": 7}
    unweighted = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 0}]
    }
    other = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        jsonl([base, reordered, unweighted, other]) + json.dumps(base, indent=None, separators=(",", ":")).encode()
    )
    scan = scan_path(path, ScanOptions())
    assert scan.duplicates == [(2, 1), (5, 1)]  # key order, spacing and unread fields aside; weight 0 differs


def test_reinforcement_files_scan_in_parallel_as_in_sequence(
    model: ModelTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Prompt tokens are the prompt with the generation prompt (what the model answers), nothing is trained,
    duplicates count the item fields, and a chat line in a later range names the line that decided the format, as
    the sequential scan does."""
    rng = random.Random(7)
    lines = [b"{broken"]
    for i in range(400):
        q = " ".join(rng.choices(WORDS, k=rng.randint(3, 40)))
        lines.append(json.dumps({"messages": [{"role": "user", "content": q}], "answer": i}).encode())
    chat = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    lines[300] = json.dumps(chat).encode()
    lines[350] = json.dumps({"answer": {"a": 1, "b": [2]}, "messages": [{"content": "z", "role": "user"}]}).encode()
    lines[351] = json.dumps({"messages": [{"role": "user", "content": "z"}], "answer": {"b": [2], "a": 1}}).encode()
    lines[352] = json.dumps({"messages": [{"role": "user", "content": "z"}], "answer": {"a": 2}}).encode()
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    opts = ScanOptions(model_folder=str(model.folder), model_name="tiny-llama", max_seq_length=30, workers=1)
    sequential = scan_path(path, opts)
    one = file_report("f", sequential, 0, model="tiny-llama", max_seq_length=30)
    monkeypatch.setattr(filescan, "PARALLEL_MIN_BYTES", 0)
    many = file_report(
        "f", scan_path(path, ScanOptions(**{**opts.__dict__, "workers": 3})), 0, model="tiny-llama", max_seq_length=30
    )
    assert many == one
    assert (one["format"], one["examples"]) == ("reinforcement", 399)
    assert [(e["line"], e["field"]) for e in one["errors"]["listed"]] == [(1, None), (301, "messages[1].role")]
    assert "fine-tune-reinforcement format, decided by line 2," in one["errors"]["listed"][1]["message"]
    assert one["duplicates"]["listed"] == [{"line": 352, "duplicate_of": 351}]  # key order aside; 353 differs
    assert one["tokens"]["trained"] == 0 and one["tokens"]["prompt_only"] is True
    # A count is the prompt rendered with the generation prompt, in the model's own tokenizer's tokens.
    record = parse_jsonl([lines[5] + b"\n"]).records[0]
    assert isinstance(record, ReinforcementRecord)
    with_prompt = len(model.hf_ids(model.template.render(record.prompt, True)))
    assert with_prompt > len(model.hf_ids(model.template.render(record.prompt, False)))
    assert sequential.tokens[list(sequential.lines).index(6)] == with_prompt
