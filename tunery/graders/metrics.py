"""``string_check``'s operations and ``text_similarity``'s metrics (the metric libraries are imported when first
used: they take a second)."""

from __future__ import annotations

from functools import cache
from typing import Any

from .errors import GraderNotRunnable


def string_check(text: str, reference: str, operation: str) -> float:
    if operation == "eq":
        return float(text == reference)
    if operation == "ne":
        return float(text != reference)
    if operation == "like":
        return float(reference in text)
    return float(reference.casefold() in text.casefold())


# ---- text similarity (the metric libraries are imported when first used: they take a second) -------------------
@cache
def _rouge_scorer(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


class _NoWordNet:
    """NLTK's METEOR without its synonym stage: WordNet's data is not shipped, so no word has a synonym."""

    def synsets(self, *_: Any, **__: Any) -> list[Any]:
        return []


def similarity(text: str, reference: str, metric: str) -> float:
    """How close ``text`` is to ``reference`` by ``metric``, from 0 to 1 (see the module for each metric's source)."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return float(fuzz.ratio(text, reference)) / 100.0
    if metric == "bleu":
        import sacrebleu

        if not text.strip() or not reference.strip():
            return 0.0
        return float(sacrebleu.sentence_bleu(text, [reference]).score) / 100.0
    words, ref_words = text.split(), reference.split()
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([ref_words], words)) if words and ref_words else 0.0
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        if not words or not ref_words:
            return 0.0
        return float(meteor_score([ref_words], words, wordnet=_NoWordNet()))
    if metric.startswith("rouge_"):
        kind = "rougeL" if metric == "rouge_l" else "rouge" + metric.removeprefix("rouge_")
        return float(_rouge_scorer(kind).score(reference, text)[kind].fmeasure)
    raise GraderNotRunnable(f"The {metric} metric is not available.")
