"""Text embeddings, one function for every part that needs them: the embedded engine's ``POST /v1/embeddings`` and
the embedding model of a ``text_similarity`` grader's ``cosine`` metric (on the API through the embedded engine,
in the reinforcement trainer in-process). So a reward computed while training is the one ``graders/run`` answers.

An embedding is the mean of the model's last hidden state over the text's tokens (the backbone's output, after its
final norm; the language-model head is not run), L2-normalised, as float32: the cosine similarity of two texts is the
dot product of their embeddings. Texts are embedded in batches of similar lengths, right-padded, so a text's
embedding does not depend on the texts batched with it (the positions of its tokens are the same). Torch is imported
only when a text is embedded; importing this module is free for the control plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

BATCH = 16  # texts per forward pass


class InputTooLong(ValueError):
    """A text longer than the model's context (``index``: which one)."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input {index} is {tokens} tokens, more than the model's {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


@dataclass(frozen=True)
class Embedded:
    """The embedding of each text (unit vectors, in order) and the tokens each text was read as."""

    vectors: list[list[float]]
    tokens: list[int]


def context_length(model: Any, tokenizer: Any, default: int = 2048) -> int:
    """The most tokens the model reads: its config's positions, or its tokenizer's limit, whichever is smaller."""
    limits = [
        n
        for n in (
            getattr(model.config, "max_position_embeddings", None),
            tokenizer.model_max_length if tokenizer.model_max_length < 10_000_000 else None,
        )
        if isinstance(n, int) and n > 0
    ]
    return min(limits) if limits else default


def load(path: str | Path, device: Any, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a safetensors model folder, for :func:`embed` (the trainer's embedding model; the
    embedded engine embeds with the base models it has loaded). Never remote code, never pickle."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} holds no safetensors model (config.json and *.safetensors)")
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True
    )
    model.to(device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    return model, tokenizer


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, as the model reads a plain text (its special tokens, such as a BOS, included)."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]


def embed(
    model: Any,
    tokenizer: Any,
    texts: list[str] | list[list[int]],
    *,
    max_length: int | None = None,
    truncate: bool = False,
    batch_size: int = BATCH,
) -> Embedded:
    """The embedding of each text (a string, or its token ids) by ``model`` (a transformers model: a causal LM, or
    its backbone). A text longer than ``max_length`` tokens (default: the model's context) is cut to it with
    ``truncate``, and is an :class:`InputTooLong` otherwise. An empty text is read as the tokenizer's padding (or
    end-of-text) token, so that it still has an embedding."""
    import torch

    limit = max_length or context_length(model, tokenizer)
    ids: list[list[int]] = (
        tokenize(tokenizer, cast(list[str], texts))
        if texts and isinstance(texts[0], str)
        else [list(t) for t in cast(list[list[int]], texts)]
    )
    filler = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i, row in enumerate(ids):
        if len(row) > limit:
            if not truncate:
                raise InputTooLong(i, len(row), limit)
            ids[i] = row[:limit]
        elif not row:
            ids[i] = [int(filler or 0)]
    backbone = getattr(model, "base_model", model)  # LlamaForCausalLM -> LlamaModel: no vocabulary projection
    device = next(model.parameters()).device
    vectors: list[list[float]] = [[] for _ in ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: little padding
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for at, i in enumerate(chunk):
                input_ids[at, : len(ids[i])] = torch.tensor(ids[i])
                mask[at, : len(ids[i])] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            hidden = backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
            unit = torch.nn.functional.normalize(mean, p=2, dim=-1)
            for at, i in enumerate(chunk):
                vectors[i] = unit[at].cpu().tolist()
    return Embedded(vectors=vectors, tokens=[len(one) for one in ids])


def cosine(a: list[float], b: list[float]) -> float:
    """The cosine similarity of two embeddings (unit vectors: their dot product), within [-1, 1]."""
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return max(-1.0, min(1.0, dot))
