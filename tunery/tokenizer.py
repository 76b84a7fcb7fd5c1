"""A base model's tokenizer and chat template in the control plane (no torch, no transformers).

Validation counts tokens the way the trainer will see them: every example is rendered with the model's chat
template and tokenized with the model's own ``tokenizer.json``; the trained (assistant) tokens are the tokens
that overlap the spans :func:`tunery.chattemplate.trained_spans` finds, exactly as the trainer masks them.

Tokenizing is the expensive part of validating a large file, so for byte-level BPE tokenizers (GPT-2 style:
SmolLM2, Llama 3, Qwen 2, Mistral Nemo and most current models) the same vocabulary is loaded into a
``tiktoken`` encoder, several times faster than ``tokenizers``. Every file validated that way is checked
against the model's ``tokenizers`` tokenizer on a sample of its examples; on any difference the file is
counted again with ``tokenizers`` (see :class:`FastPathMismatch`). Other tokenizers (SentencePiece, WordPiece,
normalizers) always use ``tokenizers``.
"""

from __future__ import annotations

import json
import logging
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from tunery.chattemplate import ChatTemplate, Span

log = logging.getLogger(__name__)

# The pattern of `tokenizers`' ByteLevel pre-tokenizer with use_regex=True (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SAMPLE_FIRST = 16  # texts compared with `tokenizers` on the fast path (per process) …
SAMPLE_EVERY = 1024  # … and then one in every this many


class FastPathMismatch(RuntimeError):
    """The tiktoken encoder disagreed with the model's tokenizer: count again with ``tokenizers``."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _fast_pattern(spec: dict[str, Any]) -> str | None:
    """The pre-tokenizer regex when the tokenizer is plain byte-level BPE tiktoken can reproduce, else None."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("dropout"):
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or spec.get("normalizer"):
        return None
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in spec.get("added_tokens") or []):
        return None
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if (
            len(steps) == 2
            and steps[0].get("type") == "Split"
            and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert")
            and "Regex" in (steps[0].get("pattern") or {})
            and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space")
        ):
            return str(steps[0]["pattern"]["Regex"])
    return None


@dataclass
class TokenCounts:
    tokens: list[int] = field(default_factory=list)  # per text: all tokens
    trained: list[int] = field(default_factory=list)  # per text: tokens that overlap a trained span


class ModelTokenizer:
    """Chat template + tokenizer of one base model folder (``tokenizer.json`` and friends)."""

    def __init__(self, folder: Path, name: str = ""):
        self.folder = folder
        self.name = name or folder.name
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        config_path = folder / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        template_path = folder / "chat_template.jinja"
        source = template_path.read_text(encoding="utf-8") if template_path.is_file() else config.get("chat_template")
        if not isinstance(source, str) or not source:
            raise ValueError(f"the model {self.name} has no chat template")
        variables = {
            key: text
            for key in ("bos_token", "eos_token", "unk_token", "pad_token")
            if (text := _token_text(config.get(key))) is not None
        }
        self.template = ChatTemplate(source, variables)
        self._hf: Any = None  # the model's own `tokenizers` tokenizer, loaded when needed
        added = spec.get("added_tokens") or []
        self.special_tokens = sorted({t["content"] for t in added if t.get("special")}, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, self.special_tokens))) if self.special_tokens else None
        id_to_token = {int(t["id"]): t["content"] for t in added}
        self.end_of_turn = self._end_of_turn(variables.get("eos_token"), id_to_token, spec)
        self.fast = self._tiktoken(spec)
        self.kind = "tiktoken" if self.fast is not None else "tokenizers"
        self._seen = 0  # texts counted on the fast path (for the sample compared with `tokenizers`)
        # (text, tiktoken ids) of the sampled texts, checked against `tokenizers` by check_samples (in the process
        # that merges a scan: worker processes need not load the second tokenizer).
        self.samples: list[tuple[str, list[int]]] = []

    @property
    def hf(self) -> Any:
        if self._hf is None:
            from tokenizers import Tokenizer

            self._hf = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        return self._hf

    def _end_of_turn(self, eos: str | None, added: dict[int, str], spec: dict[str, Any]) -> list[str]:
        """The EOS token and any extra EOS ids of the generation config (as the trainer does)."""
        out = [eos] if eos else []
        gen_path = self.folder / "generation_config.json"
        if gen_path.is_file():
            ids = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
            wanted = [int(i) for i in (ids if isinstance(ids, list) else [ids] if isinstance(ids, int) else [])]
            names = {i: added[i] for i in wanted if i in added}
            vocab = (spec.get("model") or {}).get("vocab")
            if set(wanted) - names.keys() and isinstance(vocab, dict):
                names.update({int(i): t for t, i in vocab.items() if int(i) in wanted})
            for token_id in wanted:
                text = names.get(token_id)
                if text and text not in out:
                    out.append(text)
        return out

    def check_samples(self, samples: Sequence[tuple[str, list[int]]]) -> None:
        """Compare sampled fast-path tokenizations with the model's own tokenizer; FastPathMismatch on any
        difference."""
        for text, ids in samples:
            if ids != self.hf_ids(text):
                raise FastPathMismatch(f"tiktoken and tokenizers disagree on a text of {len(text)} characters")

    def _tiktoken(self, spec: dict[str, Any]) -> Any:
        pattern = _fast_pattern(spec)
        if pattern is None:
            return None
        try:
            import tiktoken
        except ImportError:  # pragma: no cover - a dependency; keep working without it
            return None
        to_byte = {c: b for b, c in _bytes_to_unicode().items()}
        added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or []}
        ranks: dict[bytes, int] = {}
        for text, token_id in spec["model"]["vocab"].items():
            if text in added:
                continue
            try:
                ranks[bytes(to_byte[c] for c in text)] = int(token_id)
            except KeyError:
                return None  # not a byte-level vocabulary after all
        if len({*ranks.values(), *added.values()}) != len(ranks) + len(added):
            return None
        try:
            enc = tiktoken.Encoding(f"tunery-{self.name}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=added)
        except Exception:  # a pattern tiktoken's regex engine rejects
            log.info("tokenizer of %s: no tiktoken fast path", self.name, exc_info=True)
            return None
        size = max(chain(ranks.values(), added.values())) + 1
        lengths = np.zeros(size, dtype=np.int64)
        for b, token_id in ranks.items():
            lengths[token_id] = len(b)
        for text, token_id in added.items():
            lengths[token_id] = len(text.encode("utf-8"))
        self._lengths = lengths
        self._allowed = set(added)
        return enc

    # ---- checks ----------------------------------------------------------------------------------------
    def special_token_in(self, text: str) -> str | None:
        """The first special token of this tokenizer that ``text`` contains, if any."""
        if self._special_re is None:
            return None
        m = self._special_re.search(text)
        return m.group(0) if m else None

    # ---- counting --------------------------------------------------------------------------------------
    def count(self, texts: Sequence[str], spans: Sequence[Sequence[Span]], *, fast: bool = True) -> TokenCounts:
        """Token counts and trained-token counts of rendered texts (``spans``: trained character spans)."""
        if fast and self.fast is not None:
            return self._count_fast(texts, spans)
        return self._count_hf(texts, spans)

    def hf_ids(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False).ids)

    def _count_hf(self, texts: Sequence[str], spans: Sequence[Sequence[Span]]) -> TokenCounts:
        out = TokenCounts()
        for enc, text_spans in zip(self.hf.encode_batch(list(texts), add_special_tokens=False), spans, strict=True):
            offsets = enc.offsets
            out.tokens.append(len(offsets))
            trained = 0
            k = 0
            for s, e in offsets:  # the trainer's rule: a token overlapping a trained span carries loss
                if e <= s:
                    continue
                while k < len(text_spans) and text_spans[k][1] <= s:
                    k += 1
                if k < len(text_spans) and s < text_spans[k][1] and e > text_spans[k][0]:
                    trained += 1
            out.trained.append(trained)
        return out

    def _count_fast(self, texts: Sequence[str], spans: Sequence[Sequence[Span]]) -> TokenCounts:
        enc = self.fast
        allowed = self._allowed
        ids = [enc.encode(t, allowed_special=allowed) for t in texts]
        for i in range(len(texts)):
            seen = self._seen + i
            if seen < SAMPLE_FIRST or seen % SAMPLE_EVERY == 0:
                self.samples.append((texts[i], ids[i]))
        self._seen += len(texts)
        out = TokenCounts(tokens=[len(x) for x in ids], trained=[0] * len(texts))
        if not any(spans):
            return out
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=sum(out.tokens))
        ends = np.cumsum(self._lengths[flat])
        starts = ends - self._lengths[flat]
        ends_l: list[int] = ends.tolist()
        starts_l: list[int] = starts.tolist()
        base_byte = 0
        base_tok = 0
        for i, (text, text_spans) in enumerate(zip(texts, spans, strict=True)):
            n_tok = out.tokens[i]
            if text_spans:
                ascii_ = text.isascii()
                trained = 0
                for s, e in text_spans:
                    bs = s if ascii_ else len(text[:s].encode("utf-8"))
                    be = e if ascii_ else len(text[:e].encode("utf-8"))
                    lo = bisect_right(ends_l, base_byte + bs, base_tok, base_tok + n_tok)
                    hi = bisect_left(starts_l, base_byte + be, base_tok, base_tok + n_tok)
                    trained += max(0, hi - lo)
                out.trained[i] = trained
            base_tok += n_tok
            base_byte += len(text) if text.isascii() else len(text.encode("utf-8"))
        return out


@lru_cache(maxsize=8)
def load_model_tokenizer(folder: str, name: str = "") -> ModelTokenizer:
    return ModelTokenizer(Path(folder), name)
