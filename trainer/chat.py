"""Chat records -> token ids and the assistant-token mask (which tokens carry loss).

Many chat templates (SmolLM2's among them) have no ``{% generation %}`` block, so the tokenizer's
``return_assistant_tokens_mask`` is all zero. We compute the mask ourselves, for any template that renders
conversations append-only:

* render the whole conversation once (the text the model is trained on);
* for each assistant turn ``i`` with weight 1, render ``messages[:i]`` with the generation prompt (the header
  the model sees at inference, e.g. ``<|im_start|>assistant\\n``) and ``messages[:i+1]``; both must be prefixes
  of the full rendering, otherwise the template is not append-only and we stop with a clear error;
* the trained span is what lies between the two: the assistant content and its end-of-turn token
  (``<|im_end|>``), without any whitespace the template puts after it;
* tokenize the full text once, with character offsets, and mark every token that overlaps a trained span.

Tokenizing once (instead of comparing token prefixes) keeps the ids identical to what
``apply_chat_template(tokenize=True)`` gives, even where a BPE merge crosses a turn boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunery.chattemplate import ChatTemplateError, trained_spans
from tunery.data import ChatMessage, ChatRecord

__all__ = ["ChatTemplateError", "ChatTokenizer", "TokenizedExample", "TokenizedSet", "end_of_turn_tokens"]


@dataclass
class TokenizedExample:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 = trained on (carries loss)
    line: int = 0
    truncated: bool = False

    @property
    def n_trained(self) -> int:
        return sum(self.assistant_masks)


@dataclass
class TokenizedSet:
    examples: list[TokenizedExample] = field(default_factory=list)
    n_records: int = 0
    truncated_lines: list[int] = field(default_factory=list)
    # Examples left without any trained token after truncation (they carry no loss, so they are not used).
    dropped_lines: list[int] = field(default_factory=list)

    @property
    def n_truncated(self) -> int:
        return len(self.truncated_lines)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped_lines)

    @property
    def n_tokens(self) -> int:
        """Tokens of one pass over the data (every token of every used example, masked or not)."""
        return sum(len(e.input_ids) for e in self.examples)

    @property
    def n_trained_tokens(self) -> int:
        return sum(e.n_trained for e in self.examples)

    def columns(self) -> dict[str, list[list[int]]]:
        """The columns of the pre-tokenized dataset handed to TRL."""
        return {
            "input_ids": [e.input_ids for e in self.examples],
            "assistant_masks": [e.assistant_masks for e in self.examples],
        }


def end_of_turn_tokens(tokenizer: Any, extra_ids: Iterable[int] = ()) -> list[str]:
    """The strings that close an assistant turn: the EOS token, plus any extra EOS ids (generation config)."""
    tokens: list[str] = []
    if tokenizer.eos_token:
        tokens.append(tokenizer.eos_token)
    for token_id in extra_ids:
        text = tokenizer.convert_ids_to_tokens(int(token_id))
        if isinstance(text, str) and text and text not in tokens:
            tokens.append(text)
    return tokens


class ChatTokenizer:
    """Renders and tokenizes chat records with a tokenizer's chat template, computing the assistant mask."""

    def __init__(self, tokenizer: Any, end_of_turn: Sequence[str] | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError("the base model's tokenizer has no chat template")
        if not getattr(tokenizer, "is_fast", False):
            raise ChatTemplateError("the base model needs a fast tokenizer (character offsets are required)")
        self.tokenizer = tokenizer
        self.end_of_turn = list(end_of_turn) if end_of_turn is not None else end_of_turn_tokens(tokenizer)

    def render(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {"tools": tools} if tools else {}
        text = self.tokenizer.apply_chat_template(
            [m.as_template_dict() for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
        if not isinstance(text, str):
            raise ChatTemplateError(f"chat template rendered {type(text).__name__}, expected text")
        return text

    def trained_spans(self, record: ChatRecord) -> tuple[str, list[tuple[int, int]]]:
        """The full rendering and the character spans of the trained assistant turns (shared with validation)."""
        return trained_spans(self.render, record, self.end_of_turn)

    def tokenize(self, record: ChatRecord, max_length: int | None = None) -> TokenizedExample:
        full, spans = self.trained_spans(record)
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        mask = [0] * len(ids)
        k = 0  # spans and offsets are both in text order
        for j, (s, e) in enumerate(offsets):
            if e <= s:
                continue
            while k < len(spans) and spans[k][1] <= s:
                k += 1
            if k < len(spans) and s < spans[k][1] and e > spans[k][0]:
                mask[j] = 1
        truncated = max_length is not None and len(ids) > max_length
        if truncated:
            ids, mask = ids[:max_length], mask[:max_length]
        return TokenizedExample(input_ids=ids, assistant_masks=mask, line=record.line, truncated=truncated)

    def tokenize_all(self, records: Iterable[ChatRecord], max_length: int | None = None) -> TokenizedSet:
        out = TokenizedSet()
        for record in records:
            out.n_records += 1
            example = self.tokenize(record, max_length)
            if example.truncated:
                out.truncated_lines.append(record.line)
            if example.n_trained == 0:
                out.dropped_lines.append(record.line)
                continue
            out.examples.append(example)
        return out
