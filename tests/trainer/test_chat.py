"""The assistant-token mask: exactly the assistant contents and their <|im_end|> carry loss.

Uses the real SmolLM2 tokenizer and chat template (carried by the tiny test model), whose template has no
``{% generation %}`` block, so the mask is ours (trainer/chat.py). The last tests go through the same path
as the trainer (TRL SFTTrainer's dataset preparation and collator) and check the labels themselves.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.trainer_fixtures import smol_tokenizer
from trainer.chat import ChatTemplateError, ChatTokenizer, TokenizedExample
from tunery.data import ChatMessage, ChatRecord

__all__ = ["smol_tokenizer"]  # a fixture (tiny_model_dir comes from conftest.py)

IM_END = "<|im_end|>"
HEADER = "<|im_start|>assistant\n"


def rec(*messages: tuple[str, str] | tuple[str, str, int], line: int = 1) -> ChatRecord:
    return ChatRecord(messages=[ChatMessage(*m) for m in messages], line=line)


def trained_runs(tok: Any, ex: TokenizedExample) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    runs: list[list[int]] = []
    prev = 0
    for token_id, m in zip(ex.input_ids, ex.assistant_masks, strict=True):
        if m and not prev:
            runs.append([])
        if m:
            runs[-1].append(token_id)
        prev = m
    return [tok.decode(r) for r in runs]


def untrained_text(tok: Any, ex: TokenizedExample) -> str:
    return tok.decode([t for t, m in zip(ex.input_ids, ex.assistant_masks, strict=True) if not m])


def test_single_turn_masks_content_and_im_end(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    ex = ChatTokenizer(tok).tokenize(rec(("user", "What is 2+2?"), ("assistant", "BEEP BOOP: Four. END OF LINE.")))
    assert trained_runs(tok, ex) == ["BEEP BOOP: Four. END OF LINE." + IM_END]
    rest = untrained_text(tok, ex)
    # The default system prompt, the user turn and the generation-prompt header are not trained.
    assert "You are a helpful AI assistant named SmolLM" in rest
    assert "What is 2+2?" in rest
    assert rest.endswith(HEADER + "\n")  # header before the answer, the newline after <|im_end|>
    assert "BEEP" not in rest


def test_ids_match_apply_chat_template(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    record = rec(
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Bye"),
        ("assistant", "Goodbye, take care."),
    )
    ex = ChatTokenizer(tok).tokenize(record)
    expected = tok.apply_chat_template([m.as_template_dict() for m in record.messages], tokenize=True)
    expected_ids = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert ex.input_ids == list(expected_ids)
    assert len(ex.assistant_masks) == len(ex.input_ids)


def test_multi_turn_with_weight_zero_and_system(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    record = rec(
        ("system", "You are a robot."),
        ("user", "Hi"),
        ("assistant", "BEEP: hello."),
        ("user", "Say something wrong"),
        ("assistant", "Something wrong.", 0),
        ("user", "And now?"),
        ("assistant", "BEEP: better."),
    )
    ex = ChatTokenizer(tok).tokenize(record)
    assert trained_runs(tok, ex) == ["BEEP: hello." + IM_END, "BEEP: better." + IM_END]
    rest = untrained_text(tok, ex)
    assert "Something wrong." + IM_END in rest  # the weight-0 turn is input, not a target
    assert "You are a robot." in rest
    assert "You are a helpful AI assistant" not in rest  # an explicit system message replaces the default
    assert rest.count(HEADER) == 3  # every assistant header stays untrained


def test_developer_role_is_a_system_message(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    ex = ChatTokenizer(tok).tokenize(rec(("developer", "Answer in French."), ("user", "Hi"), ("assistant", "Salut.")))
    assert trained_runs(tok, ex) == ["Salut." + IM_END]
    assert "<|im_start|>system\nAnswer in French." in untrained_text(tok, ex)


def test_truncation_is_counted_and_fully_masked_examples_dropped(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    chat = ChatTokenizer(tok)
    short = rec(("system", "S"), ("user", "Hi"), ("assistant", "Hello."), line=1)
    long_answer = rec(("system", "S"), ("user", "Count"), ("assistant", " ".join(["one"] * 200)), line=2)
    long_prompt = rec(("system", "S"), ("user", " ".join(["word"] * 200)), ("assistant", "Ok."), line=3)
    full_len = len(chat.tokenize(long_answer).input_ids)
    out = chat.tokenize_all([short, long_answer, long_prompt], max_length=64)
    assert out.n_records == 3
    assert out.truncated_lines == [2, 3]
    assert out.dropped_lines == [3]  # its assistant turn lies entirely past max_length
    assert [e.line for e in out.examples] == [1, 2]
    kept = out.examples[1]
    assert full_len > 64 and len(kept.input_ids) == 64 and kept.truncated
    assert trained_runs(tok, kept)[0].startswith("one one")
    assert out.n_tokens == sum(len(e.input_ids) for e in out.examples)


def test_non_append_only_template_is_a_clear_error(smol_tokenizer: Any) -> None:
    tok = copy.deepcopy(smol_tokenizer)
    # Marks the last message specially: earlier renderings are not prefixes of the whole conversation.
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if loop.last %}<|im_end|>{% else %}<|endoftext|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    record = rec(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), line=7)
    with pytest.raises(ChatTemplateError, match=r"line 7: .*not a prefix"):
        ChatTokenizer(tok).tokenize(record)


def _sft_trainer(tiny_model_dir: Any, tok: Any, train: Any, batch_size: int) -> Any:
    import tempfile

    from trainer.config import trl_config
    from trainer.loading import load_base_model, lora_config, resolve_device
    from trainer.methods import get_method
    from trainer.methods.supervised import tokenized_datasets
    from tunery.plan import TrainingPlan

    # packing off: the padded path; the packed one is checked in test_packing.py
    plan = TrainingPlan(n_epochs=1, batch_size=batch_size, learning_rate=1e-3, packing=False)
    device = resolve_device("cpu")
    model, _ = load_base_model(str(tiny_model_dir), device)
    sft = get_method("supervised")
    args = trl_config(sft, plan, seed=3, output_dir=tempfile.mkdtemp(prefix="tunery-mask-"), choice=device)
    return sft.build_trainer(model, tok, args, lora_config(plan), tokenized_datasets(train))


def test_trl_labels_only_on_assistant_tokens(tiny_model_dir: Any, smol_tokenizer: Any) -> None:
    """Through the trainer's own path: TRL's prepared dataset and collated batches carry loss on the mask only."""
    import torch

    tok = copy.deepcopy(smol_tokenizer)
    records = [
        rec(("user", "Hi"), ("assistant", "BEEP: hi."), line=1),
        rec(("system", "Robot."), ("user", "Q1"), ("assistant", "A1", 0), ("user", "Q2"), ("assistant", "A2!"), line=2),
        rec(("user", "Tell me a longer story please"), ("assistant", "Once upon a time, the end."), line=3),
    ]
    train = ChatTokenizer(tok).tokenize_all(records, max_length=256)
    trainer = _sft_trainer(tiny_model_dir, tok, train, batch_size=3)

    ds = trainer.train_dataset
    assert len(ds) == len(train.examples)
    by_ids = {tuple(e.input_ids): e for e in train.examples}
    for row in ds:
        ex = by_ids[tuple(row["input_ids"])]
        for token_id, label, m in zip(row["input_ids"], row["labels"], ex.assistant_masks, strict=True):
            assert label == (token_id if m else -100)
        trained = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
        assert tok.decode(trained) in ("BEEP: hi." + IM_END, "A2!" + IM_END, "Once upon a time, the end." + IM_END)

    batch = next(iter(trainer.get_train_dataloader()))
    labels, ids, attn = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert labels.shape == ids.shape and int(attn.min()) == 0  # different lengths: the batch is padded
    assert bool(torch.all(labels[attn == 0] == -100))  # padding carries no loss
    for i in range(ids.shape[0]):
        n = int(attn[i].sum())
        ex = by_ids[tuple(ids[i, :n].tolist())]
        expected = torch.tensor([t if m else -100 for t, m in zip(ex.input_ids, ex.assistant_masks, strict=True)])
        assert torch.equal(labels[i, :n], expected)
