"""OpenAI's grader objects, typed, and their checks before a grader runs (:func:`parse_grader`)."""

from __future__ import annotations

import ast
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunery.wire import omitted, schema_as_sent

from .errors import MAX_JUDGE_TOKENS, MAX_PYTHON_SOURCE_CHARS, MAX_SUB_GRADERS, GraderError
from .formulas import parse_formula
from .templates import check_template


class GraderObject(BaseModel):
    """A part of a grader. Fields OpenAI adds later are accepted and kept (the API logs them), as for its requests."""

    model_config = ConfigDict(
        extra="allow", json_schema_serialization_defaults_required=True, json_schema_extra=schema_as_sent
    )


class StringCheckGrader(GraderObject):
    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


SIMILARITY_METRICS = (
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
SimilarityMetric = Literal[
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
]


class TextSimilarityGrader(GraderObject):
    type: Literal["text_similarity"] = "text_similarity"
    name: str
    input: str
    reference: str
    evaluation_metric: SimilarityMetric


class PythonGrader(GraderObject):
    type: Literal["python"]
    name: str
    source: str
    image_tag: str | None = omitted()


class PromptCacheBreakpoint(GraderObject):
    """OpenAI's explicit prompt-cache breakpoint of a content part (accepted and kept; it changes nothing here)."""

    mode: Literal["explicit"] = "explicit"


class InputText(GraderObject):
    type: Literal["input_text"]
    text: str
    # Typed so that a null one is left out of the echo (OpenAI's is an object, never null) and a bad one refused.
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = omitted()


class OutputText(GraderObject):
    type: Literal["output_text"]
    text: str


class InputImage(GraderObject):
    type: Literal["input_image"]
    image_url: str
    detail: str | None = omitted()


class AudioData(GraderObject):
    data: str
    format: Literal["mp3", "wav"]


class InputAudio(GraderObject):
    type: Literal["input_audio"]
    input_audio: AudioData


ContentPart = Annotated[InputText | OutputText | InputImage | InputAudio, Field(discriminator="type")]


class EvalItem(GraderObject):
    """A message of a model grader's prompt: text or OpenAI's content parts (text, image, audio), with templates."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentPart | list[ContentPart]
    type: Literal["message"] | None = omitted()


class SamplingParams(GraderObject):
    seed: int | None = omitted()
    top_p: float | None = omitted()
    temperature: float | None = omitted()
    max_completions_tokens: Annotated[int, Field(ge=1)] | None = omitted()
    reasoning_effort: str | None = omitted()


class ScoreModelGrader(GraderObject):
    type: Literal["score_model"]
    name: str
    model: str
    input: list[EvalItem]
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = omitted()
    sampling_params: SamplingParams | None = omitted()


class LabelModelGrader(GraderObject):
    type: Literal["label_model"]
    name: str
    model: str
    input: list[EvalItem]
    labels: list[str]
    passing_labels: list[str]


SubGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
    Field(discriminator="type"),
]


class MultiGrader(GraderObject):
    """Sub-graders by the names the formula uses (OpenAI's guide), or one sub-grader (its schema), named by its
    ``name``."""

    type: Literal["multi"] = "multi"
    name: str
    graders: dict[str, SubGrader] | SubGrader
    calculate_output: str

    def named(self) -> dict[str, SubGrader]:
        return self.graders if isinstance(self.graders, dict) else {self.graders.name: self.graders}


Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader,
    Field(discriminator="type"),
]
AnyGrader = StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader | MultiGrader

_TOP: dict[str, type[GraderObject]] = {
    "string_check": StringCheckGrader,
    "text_similarity": TextSimilarityGrader,
    "python": PythonGrader,
    "score_model": ScoreModelGrader,
    "multi": MultiGrader,
}
_SUB: dict[str, type[GraderObject]] = {
    **{k: v for k, v in _TOP.items() if k != "multi"},
    "label_model": LabelModelGrader,
}


# ---- parsing and checking -----------------------------------------------------------------------------------------
_UNION_MEMBERS = {"str", "int", "float", "bool", "none", "list", "dict"}


def _param(where: str, loc: tuple[Any, ...]) -> str:
    """A pydantic error location as OpenAI's ``param``, without the union members pydantic names in it
    (``str``, ``tagged-union[...]`` and the tag after it)."""
    out, after_tag_union = where, False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_MEMBERS or any(c in part for c in "[]-("):
            after_tag_union = "tagged-union[" in part  # the tag follows (after a list's index, for a list of them)
            continue
        elif after_tag_union:
            after_tag_union = False  # the tag itself: the part's type, not a field
        else:
            out += f".{part}"
    return out


def _most_specific(errors: list[Any], where: str) -> tuple[Any, str]:
    """Of pydantic's errors, the deepest under the first one's field: where a value fits none of a union's members,
    the member it nearly fits says more than "should be a valid string"."""
    first = _param(where, tuple(errors[0]["loc"]))
    same = [e for e in errors if _param(where, tuple(e["loc"])).startswith(first)]
    best = max(same, key=lambda e: len(_param(where, tuple(e["loc"]))))
    return best, _param(where, tuple(best["loc"]))


def _one(data: Any, where: str, kinds: dict[str, type[GraderObject]]) -> AnyGrader:
    if not isinstance(data, dict):
        raise GraderError(f"Invalid value for '{where}': a grader is an object.", where)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in kinds:
        if kind is None:
            raise GraderError(f"Missing required parameter: '{where}.type'.", f"{where}.type")
        raise GraderError(
            f"Invalid value for '{where}.type': {str(kind)[:64]!r} is not one of {', '.join(kinds)}.", f"{where}.type"
        )
    cls = kinds[kind]
    if cls is MultiGrader:
        data = {**data, "graders": _sub_graders(data.get("graders"), f"{where}.graders")}
    try:
        grader: AnyGrader = cls.model_validate(data)  # type: ignore[assignment]
    except ValidationError as e:
        first, param = _most_specific(e.errors(), where)
        if first["type"] == "missing":
            raise GraderError(f"Missing required parameter: '{param}'.", param) from None
        raise GraderError(f"Invalid value for '{param}': {first['msg']}.", param) from None
    return grader


def _sub_graders(graders: Any, where: str) -> Any:
    """A multi grader's sub-graders: a mapping of names to graders, or one grader."""
    if graders is None:
        raise GraderError(f"Missing required parameter: '{where}'.", where)
    if isinstance(graders, dict) and isinstance(graders.get("type"), str):
        return _one(graders, where, _SUB)
    if not isinstance(graders, dict) or not graders:
        raise GraderError(f"Invalid value for '{where}': an object of named sub-graders, or one grader.", where)
    if len(graders) > MAX_SUB_GRADERS:
        raise GraderError(f"Invalid value for '{where}': at most {MAX_SUB_GRADERS} sub-graders.", where)
    return {name: _one(g, f"{where}.{name}", _SUB) for name, g in graders.items()}


def parse_grader(data: Any, where: str = "grader") -> AnyGrader:
    """A grader object as OpenAI defines it, typed and checked (:func:`check_grader`); a :class:`GraderError` naming
    the field (from ``where``) when it is not one."""
    grader = _one(data, where, _TOP)
    check_grader(grader, where)
    return grader


def check_grader(grader: AnyGrader, where: str = "grader") -> None:
    """What can be known before a grader runs: its templates refer to the sample or the item, its formula is one
    Tunery evaluates, its Python source parses and defines ``grade``."""
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        for field in ("input", "reference"):
            check_template(getattr(grader, field), f"{where}.{field}")
    elif isinstance(grader, ScoreModelGrader | LabelModelGrader):
        for i, message in enumerate(grader.input):
            for text in _strings(message.content):
                check_template(text, f"{where}.input[{i}].content")
        if isinstance(grader, ScoreModelGrader):
            check_score_model(grader, where)
        else:
            _check_labels(grader, where)
    elif isinstance(grader, PythonGrader):
        _check_python(grader.source, f"{where}.source")
    elif isinstance(grader, MultiGrader):
        named = grader.named()
        for name, sub in named.items():
            sub_where = f"{where}.graders" if not isinstance(grader.graders, dict) else f"{where}.graders.{name}"
            check_grader(sub, sub_where)
        parse_formula(grader.calculate_output, set(named), f"{where}.calculate_output")


def check_score_model(grader: ScoreModelGrader, where: str) -> None:
    """What can be known before it runs: a range of two finite numbers, the first below the second; sampling
    parameters in OpenAI's bounds."""
    if grader.range is not None:
        low, high = grader.range
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise GraderError(
                f"Invalid value for '{where}.range': [min, max] with min below max, both finite numbers "
                f"(got {grader.range}).",
                f"{where}.range",
            )
    p = grader.sampling_params
    if p is None:
        return
    bounds = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
    for name, (lo, hi) in bounds.items():
        value = getattr(p, name)
        if value is not None and not (math.isfinite(value) and lo <= value <= hi):
            raise GraderError(
                f"Invalid value for '{where}.sampling_params.{name}': a number from {lo:g} to {hi:g}.",
                f"{where}.sampling_params.{name}",
            )
    if p.max_completions_tokens is not None and p.max_completions_tokens > MAX_JUDGE_TOKENS:
        raise GraderError(
            f"Invalid value for '{where}.sampling_params.max_completions_tokens': at most {MAX_JUDGE_TOKENS}.",
            f"{where}.sampling_params.max_completions_tokens",
        )


def _check_labels(grader: LabelModelGrader, where: str) -> None:
    """Labels to choose from (distinct, not empty) and passing labels among them, as OpenAI's schema says."""
    if not grader.labels or len(set(grader.labels)) != len(grader.labels) or not all(s.strip() for s in grader.labels):
        raise GraderError(
            f"Invalid value for '{where}.labels': distinct, non-empty labels, at least one.", f"{where}.labels"
        )
    outside = [label for label in grader.passing_labels if label not in grader.labels]
    if not grader.passing_labels or outside:
        raise GraderError(
            f"Invalid value for '{where}.passing_labels': at least one, and a subset of labels"
            + (f" ({outside[0][:64]!r} is not one)." if outside else "."),
            f"{where}.passing_labels",
        )


def _strings(value: Any) -> list[str]:
    """The strings of a message's content, where templates may be."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, BaseModel):
        return [s for name in type(value).model_fields for s in _strings(getattr(value, name))]
    return []


def _check_python(source: str, param: str) -> None:
    if len(source) > MAX_PYTHON_SOURCE_CHARS:
        raise GraderError(f"Invalid value for '{param}': longer than {MAX_PYTHON_SOURCE_CHARS} characters.", param)
    try:
        tree = ast.parse(source)  # parsed and compiled only: nothing of it runs here
        compile(tree, "grader.py", "exec", dont_inherit=True)  # what the parser lets by: `return` outside a function
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise GraderError(f"Invalid value for '{param}': the source does not parse: {e}.", param) from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "grade" for n in tree.body):
        raise GraderError(f"Invalid value for '{param}': the source defines no function `grade(sample, item)`.", param)
