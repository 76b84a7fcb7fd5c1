"""OpenAI's graders: their typed objects, the checks of one before it runs, and the grading of one model sample
against one dataset item. Pure (no torch, no I/O): the API's ``/v1/fine_tuning/alpha/graders/*`` uses it today and
the reinforcement trainer will later (docs/graders.md).

- Templates: ``{{sample.output_text}}``, ``{{sample.output_json}}`` (or a path into it, ``{{sample.output_json.a.b}}``),
  ``{{item}}`` and ``{{item.a.b}}``; spaces inside the braces are allowed, a number in a path indexes a list. A string
  is put in as it is, any other value as its JSON. A reference to anything else is refused when the grader is checked;
  a reference the sample or item does not have is found when it runs (``invalid_variable_error``, or
  ``sample_parse_error`` when the sample is not JSON).
- ``string_check``: eq, ne, like (contains, case-sensitive), ilike (contains, ignoring case); 1 or 0.
- ``text_similarity``: fuzzy_match (rapidfuzz's normalised Indel similarity), bleu (sacrebleu's sentence BLEU / 100),
  gleu (NLTK's sentence GLEU), meteor (NLTK's METEOR with exact and Porter-stem matches only: its WordNet synonym
  stage needs data that is not shipped, so it matches no synonyms), rouge_1..rouge_5 and rouge_l (Google's
  ``rouge-score``, F-measure, no stemming). ``cosine`` needs an embedding model, and none is configured: refused.
- ``multi``: named sub-graders and a ``calculate_output`` formula, evaluated on floats by a walk of its syntax tree
  (never ``eval``): numbers, the sub-graders' names, ``+ - * /``, ``**`` or ``^`` for a power (binding as one),
  unary minus, parentheses and min, max, abs, floor, ceil, exp, sqrt, log; on floats bounded by ±1e15, so
  ``10 ** 10 ** 10`` is refused at once instead of computed for hours.
- ``python``: ``grade(sample, item)`` of the source, run in an isolated process by tunery/sandbox.py (namespaces without
  network, Landlock, seccomp, resource limits); ``sample`` is ``output_text``, ``output_json`` (the sample parsed, or
  None), ``output_tools`` (none) and ``choices`` (one assistant message). What the code does wrong (it raises, returns
  no finite number, runs out of time or memory) is ``python_grader_runtime_error`` with its details and a reward of 0.
  Refused (:class:`GraderNotRunnable`) where no sandbox can be made on the machine, never run without one.
- ``score_model`` and ``label_model`` are checked as well-formed but not run (:class:`GraderNotRunnable`): they need a
  judge model served by Tunery.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunery import sandbox

# Bounds on what one grader may ask for: a formula's length and depth, a sub-grader count, a text's length (the
# similarity metrics are quadratic in it at worst), and the size of any number a formula computes.
MAX_FORMULA_CHARS = 1024
MAX_FORMULA_DEPTH = 32
MAX_SUB_GRADERS = 32
MAX_TEXT_CHARS = 65_536
MAX_WORDS_QUADRATIC = 1_000  # rouge_l and meteor align every word with every word, in Python
MAX_PYTHON_SOURCE_CHARS = 256 * 1024
MAX_MAGNITUDE = 1e15


class GraderError(ValueError):
    """A grader that cannot be run as sent: a message for the client and the field it is about (``param``, from
    ``grader``: ``grader.calculate_output``, ``grader.graders.a.input``)."""

    code = "invalid_grader"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class TemplateError(GraderError):
    code = "invalid_template"


class FormulaError(GraderError):
    code = "invalid_formula"


class GraderNotRunnable(GraderError):
    """A well-formed grader Tunery does not run (yet): python, score_model, label_model, cosine similarity."""

    code = "grader_not_supported"


def _schema_as_sent(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """A field left out when None (:func:`_optional`) is neither required nor nullable in the schema."""
    required = schema.get("required", [])
    for name, info in cls.model_fields.items():
        if info.exclude_if is None:
            continue
        if name in required:
            required.remove(name)
        prop = schema.get("properties", {}).get(name, {})
        prop.pop("default", None)
        branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
        if len(branches) == 1:
            del prop["anyOf"]
            prop.update(branches[0])
    if not required:
        schema.pop("required", None)


def _optional() -> Any:
    """An optional field OpenAI does not make nullable: left out of the JSON when None."""
    return Field(default=None, exclude_if=lambda v: v is None)


class GraderObject(BaseModel):
    """A part of a grader. Fields OpenAI adds later are accepted and kept (the API logs them), as for its requests."""

    model_config = ConfigDict(
        extra="allow", json_schema_serialization_defaults_required=True, json_schema_extra=_schema_as_sent
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
    image_tag: str | None = _optional()


class InputText(GraderObject):
    type: Literal["input_text"]
    text: str


class OutputText(GraderObject):
    type: Literal["output_text"]
    text: str


class InputImage(GraderObject):
    type: Literal["input_image"]
    image_url: str
    detail: str | None = _optional()


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
    type: Literal["message"] | None = _optional()


class SamplingParams(GraderObject):
    seed: int | None = _optional()
    top_p: float | None = _optional()
    temperature: float | None = _optional()
    max_completions_tokens: Annotated[int, Field(ge=1)] | None = _optional()
    reasoning_effort: str | None = _optional()


class ScoreModelGrader(GraderObject):
    type: Literal["score_model"]
    name: str
    model: str
    input: list[EvalItem]
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = _optional()
    sampling_params: SamplingParams | None = _optional()


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
    elif isinstance(grader, PythonGrader):
        _check_python(grader.source, f"{where}.source")
    elif isinstance(grader, MultiGrader):
        named = grader.named()
        for name, sub in named.items():
            sub_where = f"{where}.graders" if not isinstance(grader.graders, dict) else f"{where}.graders.{name}"
            check_grader(sub, sub_where)
        parse_formula(grader.calculate_output, set(named), f"{where}.calculate_output")


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


# ---- templates ----------------------------------------------------------------------------------------------------
_TAG = re.compile(r"\{\{([^{}]*)\}\}")
_REFERENCE = re.compile(r"(sample|item)((?:\.[A-Za-z0-9_\-]+)*)")
SAMPLE_FIELDS = ("output_text", "output_json")


def _references(text: str, param: str) -> list[tuple[str, tuple[str, ...]]]:
    """Each ``{{ ... }}`` of ``text`` as (namespace, path); a :class:`TemplateError` for one Tunery cannot fill."""
    found = []
    for m in _TAG.finditer(text):
        ref = m.group(1).strip()
        shown = m.group(0)[:80]
        parsed = _REFERENCE.fullmatch(ref)
        if parsed is None:
            raise TemplateError(
                f"Invalid template {shown!r} in '{param}': a template is {{{{sample.output_text}}}}, "
                "{{sample.output_json...}} or {{item...}}.",
                param,
            )
        namespace, rest = parsed.group(1), parsed.group(2)
        path = tuple(rest.split(".")[1:]) if rest else ()
        if namespace == "sample":
            if not path or path[0] not in SAMPLE_FIELDS:
                raise TemplateError(
                    f"Unknown reference {shown!r} in '{param}': the sample has {', '.join(SAMPLE_FIELDS)}.", param
                )
            if path[0] == "output_text" and len(path) > 1:
                raise TemplateError(f"Unknown reference {shown!r} in '{param}': output_text is a string.", param)
        found.append((namespace, path))
    return found


def check_template(text: str, param: str) -> None:
    _references(text, param)


class _Unfilled(Exception):
    def __init__(self, flag: str, message: str):
        super().__init__(message)
        self.flag = flag


class _Context:
    """The ``sample`` and ``item`` namespaces of one run; the sample's JSON is parsed when first referenced."""

    _NO_JSON = object()

    def __init__(self, sample: str, item: Any, python: dict[int, sandbox.Outcome] | None = None):
        self.sample = sample
        self.item = item
        self.python = python or {}  # what each python grader (by id) gave for this sample, graded in a batch
        self._json: Any = None
        self._parsed = False

    def output_json(self) -> Any:
        if not self._parsed:
            self._parsed = True
            try:
                self._json = json.loads(self.sample)
            except (ValueError, RecursionError):
                self._json = self._NO_JSON
        if self._json is self._NO_JSON:
            raise _Unfilled("sample_parse_error", "the model sample is not valid JSON")
        return self._json

    def lookup(self, namespace: str, path: tuple[str, ...]) -> Any:
        if namespace == "sample":
            if path[0] == "output_text":
                return self.sample
            value, where, path = self.output_json(), "sample.output_json", path[1:]
        else:
            value, where = self.item, "item"
        for key in path:
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                raise _Unfilled("invalid_variable_error", f"{where} has no {key!r}")
            where += f".{key}"
        return value


def render(text: str, ctx: _Context, param: str) -> str:
    """``text`` with its templates filled: a string as it is, any other value as its JSON."""
    refs = iter(_references(text, param))

    def fill(_: re.Match[str]) -> str:
        value = ctx.lookup(*next(refs))
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _TAG.sub(fill, text)


# ---- formulas -----------------------------------------------------------------------------------------------------
FUNCTIONS: dict[str, tuple[Callable[..., float], int | None]] = {
    "min": (min, None),
    "max": (max, None),
    "abs": (abs, 1),
    "floor": (lambda x: float(math.floor(x)), 1),
    "ceil": (lambda x: float(math.ceil(x)), 1),
    "exp": (math.exp, 1),
    "sqrt": (math.sqrt, 1),
    "log": (math.log, 1),
}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


class Formula:
    """A checked ``calculate_output``: :meth:`evaluate` it with the sub-graders' rewards."""

    def __init__(self, tree: ast.expr, names: frozenset[str]):
        self.tree = tree
        self.names = names

    def evaluate(self, values: dict[str, float]) -> float:
        """Its value on floats; ArithmeticError or ValueError when it has none (a division by zero, the log of a
        negative, a magnitude over :data:`MAX_MAGNITUDE`)."""
        return _evaluate(self.tree, values)


def _too_large() -> OverflowError:
    return OverflowError(f"a value is beyond ±{MAX_MAGNITUDE:g}")


def _bounded(x: float) -> float:
    if not math.isfinite(x) or abs(x) > MAX_MAGNITUDE:
        raise _too_large()
    return x


def _evaluate(node: ast.expr, values: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)  # checked by parse_formula
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        x = _evaluate(node.operand, values)
        return -x if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.BinOp):
        a, b = _evaluate(node.left, values), _evaluate(node.right, values)
        if isinstance(node.op, ast.Pow) and a == 0 and b < 0:
            raise ZeroDivisionError("zero to a negative power")
        try:
            result = _BINARY[type(node.op)](a, b)
        except OverflowError:
            raise _too_large() from None
        if isinstance(result, complex):
            raise ValueError("a negative number to a fractional power")
        return _bounded(result)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    fn, _ = FUNCTIONS[node.func.id]
    args = [_evaluate(a, values) for a in node.args]
    try:
        return _bounded(float(fn(*args)))
    except OverflowError:
        raise _too_large() from None


def parse_formula(text: str, names: set[str], param: str = "calculate_output") -> Formula:
    """``text`` as a :class:`Formula` over the sub-graders ``names``; a :class:`FormulaError` naming what it may not
    hold. Its syntax tree is walked, never executed."""
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"Invalid formula in '{param}': longer than {MAX_FORMULA_CHARS} characters.", param)
    try:
        # OpenAI's guide writes a power as ^: read as **, so it binds as a power does (Python's ^ binds below + and *).
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        msg = e.msg if isinstance(e, SyntaxError) else str(e)
        raise FormulaError(f"Invalid formula in '{param}': it does not parse ({msg}).", param) from None
    _check_node(tree.body, names, param, 0)
    _check_constants(tree.body, param)
    return Formula(tree.body, frozenset(names))


def _check_constants(node: ast.expr, param: str) -> None:
    """A part of the formula without names has one value whatever the rewards: refuse it now if it has none
    (``10 ** 10 ** 10``, ``1 / 0``)."""
    if not any(isinstance(n, ast.Name) and not _is_callee(node, n) for n in ast.walk(node)):
        try:
            _evaluate(node, {})
        except (ArithmeticError, ValueError) as e:
            what = f"Invalid formula in '{param}': {ast.unparse(node)[:60]} has no value ({e})."
            raise FormulaError(what, param) from None
        return
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):
            _check_constants(child, param)


def _is_callee(tree: ast.expr, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def _check_node(node: ast.expr, names: set[str], param: str, depth: int) -> None:
    def refuse(what: str) -> FormulaError:
        return FormulaError(f"Invalid formula in '{param}': {what}.", param)

    if depth > MAX_FORMULA_DEPTH:
        raise refuse(f"nested deeper than {MAX_FORMULA_DEPTH} levels")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise refuse(f"{node.value!r} is not a number")
        if not abs(node.value) <= MAX_MAGNITUDE:
            raise refuse(f"the number {ast.unparse(node)[:20]} is beyond ±{MAX_MAGNITUDE:g}")
        return
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise refuse(f"{node.id!r} is not the name of a sub-grader (they are: {known})")
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd):
            raise refuse(f"the operator {type(node.op).__name__} is not allowed")
        _check_node(node.operand, names, param, depth + 1)
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise refuse(f"the operator {type(node.op).__name__} is not allowed (only + - * / ** ^)")
        _check_node(node.left, names, param, depth + 1)
        _check_node(node.right, names, param, depth + 1)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise refuse(f"{ast.unparse(node.func)[:40]!r} is not a function it may call")
        if node.func.id not in FUNCTIONS:
            raise refuse(f"{node.func.id!r} is not a function it may call (only {', '.join(FUNCTIONS)})")
        _, arity = FUNCTIONS[node.func.id]
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise refuse(f"{node.func.id}() takes plain arguments")
        if (arity is None and not node.args) or (arity is not None and len(node.args) != arity):
            wanted = "at least 1 argument" if arity is None else f"{arity} argument"
            raise refuse(f"{node.func.id}() takes {wanted}, not {len(node.args)}")
        for a in node.args:
            _check_node(a, names, param, depth + 1)
        return
    if isinstance(node, ast.Attribute):
        raise refuse(f"attribute access ({ast.unparse(node)[:40]}) is not allowed")
    raise refuse(f"{type(node).__name__} is not allowed (only numbers, sub-grader names, + - * / ** ^ and calls)")


# ---- grading ------------------------------------------------------------------------------------------------------
ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_runtime_error",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
)


class GradeErrors(BaseModel):
    """OpenAI's ``metadata.errors`` of a run: every flag, false unless that failure happened."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None

    def any(self) -> bool:
        return any(getattr(self, f) for f in ERROR_FLAGS)

    def merge(self, other: GradeErrors) -> None:
        for f in ERROR_FLAGS:
            if getattr(other, f):
                setattr(self, f, True)


class GradeMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    name: str
    type: str
    errors: GradeErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None = None
    sampled_model_name: str | None = None


class GradeResult(BaseModel):
    """OpenAI's ``RunGraderResponse``: the reward (0 when any error flag is set), what happened, the sub-rewards of a
    multi grader. ``problems``: the messages behind the flags, for logs (not part of OpenAI's answer)."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    reward: float
    metadata: GradeMetadata
    sub_rewards: dict[str, Any] = {}
    model_grader_token_usage_per_model: dict[str, Any] = {}
    problems: list[str] = Field(default=[], exclude=True)


def _not_runnable(grader: AnyGrader, where: str) -> GraderNotRunnable | None:
    if isinstance(grader, PythonGrader):
        missing = sandbox.unavailable()
        if missing:
            return _no_sandbox(missing, where)
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return GraderNotRunnable(
            f"The {grader.type} grader is not implemented yet in Tunery: it needs a judge model served by Tunery's "
            f"engine, which graders cannot call yet. '{where}' is well-formed, but cannot run.",
            f"{where}.type",
        )
    if isinstance(grader, TextSimilarityGrader) and grader.evaluation_metric == "cosine":
        return GraderNotRunnable(
            "The cosine metric needs an embedding model, and Tunery has none configured: use another "
            "evaluation_metric (fuzzy_match, bleu, gleu, meteor, rouge_1..rouge_5, rouge_l).",
            f"{where}.evaluation_metric",
        )
    if isinstance(grader, MultiGrader):
        for name, sub in grader.named().items():
            sub_where = f"{where}.graders" if not isinstance(grader.graders, dict) else f"{where}.graders.{name}"
            refused = _not_runnable(sub, sub_where)
            if refused:
                return refused
    return None


def _no_sandbox(missing: str, where: str) -> GraderNotRunnable:
    return GraderNotRunnable(
        f"The python grader cannot run on this server: it runs only in an isolated sandbox (no network, no files, "
        f"CPU, memory and time limits), and {missing}. '{where}' is well-formed, but cannot run.",
        f"{where}.type",
    )


def check_runnable(grader: AnyGrader, where: str = "grader") -> None:
    """Raise :class:`GraderNotRunnable` for a grader (or a sub-grader) Tunery does not run."""
    refused = _not_runnable(grader, where)
    if refused:
        raise refused


def run_grader(
    grader: AnyGrader,
    model_sample: str,
    item: Any = None,
    where: str = "grader",
    limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
) -> GradeResult:
    """Grade ``model_sample`` against ``item`` with a checked grader (:func:`parse_grader`). What depends on the
    sample or the item (a reference it lacks, a sample that is not JSON, a formula without a value, a python grader
    that fails) is an error flag and a reward of 0; a grader Tunery does not run is a :class:`GraderNotRunnable`.
    ``limits``: those of a python grader's sandbox, for each python grader in it."""
    check_runnable(grader, where)
    return _grade(grader, _Context(model_sample, {} if item is None else item), where, limits)


def run_graders(
    grader: AnyGrader,
    samples: list[str],
    items: list[Any],
    where: str = "grader",
    limits: sandbox.Limits = sandbox.DEFAULT_LIMITS,
) -> list[GradeResult]:
    """:func:`run_grader` of each sample against its item (a reinforcement step's completions): the same results,
    with each python grader in ``grader`` run once for all of them, in one sandbox (its start paid once)."""
    check_runnable(grader, where)
    if len(samples) != len(items):
        raise ValueError(f"{len(samples)} samples for {len(items)} items")
    items = [{} if item is None else item for item in items]
    pythons = [grader] if isinstance(grader, PythonGrader) else []
    if isinstance(grader, MultiGrader):
        pythons = [g for g in grader.named().values() if isinstance(g, PythonGrader)]
    batches: dict[int, list[sandbox.Outcome]] = {}
    for python in pythons:
        pairs = [(python_sample(s), item) for s, item in zip(samples, items, strict=True)]
        try:
            batches[id(python)] = sandbox.run_python_batch(python.source, pairs, limits)
        except sandbox.SandboxUnavailable as e:
            raise _no_sandbox(str(e), where) from None
    return [
        _grade(grader, _Context(s, item, {k: v[i] for k, v in batches.items()}), where, limits)
        for i, (s, item) in enumerate(zip(samples, items, strict=True))
    ]


def _grade(grader: AnyGrader, ctx: _Context, where: str, limits: sandbox.Limits) -> GradeResult:
    started = time.perf_counter()
    errors = GradeErrors()
    problems: list[str] = []
    sub_rewards: dict[str, Any] = {}
    if isinstance(grader, MultiGrader):
        named = grader.named()
        values: dict[str, float] = {}
        for name, sub in named.items():
            sub_where = f"{where}.graders" if not isinstance(grader.graders, dict) else f"{where}.graders.{name}"
            values[name] = _score(sub, ctx, sub_where, errors, problems, limits)
        sub_rewards = dict(values)
        reward = 0.0
        if not errors.any():
            formula = parse_formula(grader.calculate_output, set(named), f"{where}.calculate_output")
            try:
                reward = formula.evaluate(values)
            except (ArithmeticError, ValueError) as e:
                errors.other_error = True
                problems.append(f"{where}.calculate_output has no value: {e}")
    else:
        reward = _score(grader, ctx, where, errors, problems, limits)
    if errors.any():
        reward = 0.0
    metadata = GradeMetadata(
        name=grader.name,
        type=grader.type,
        errors=errors,
        execution_time=time.perf_counter() - started,
        scores=dict(sub_rewards),
    )
    return GradeResult(reward=reward, metadata=metadata, sub_rewards=sub_rewards, problems=problems)


def _score(
    grader: AnyGrader, ctx: _Context, where: str, errors: GradeErrors, problems: list[str], limits: sandbox.Limits
) -> float:
    if isinstance(grader, PythonGrader):
        return _run_python(grader, ctx, where, errors, problems, limits)
    assert isinstance(grader, StringCheckGrader | TextSimilarityGrader)
    try:
        text = render(grader.input, ctx, f"{where}.input")
        reference = render(grader.reference, ctx, f"{where}.reference")
    except _Unfilled as e:
        setattr(errors, e.flag, True)
        problems.append(f"{where}: {e}")
        return 0.0
    if isinstance(grader, StringCheckGrader):
        return string_check(text, reference, grader.operation)
    if max(len(text), len(reference)) > MAX_TEXT_CHARS:
        errors.truncated_observation_error = True
        problems.append(f"{where}: a text is longer than {MAX_TEXT_CHARS} characters")
        return 0.0
    if grader.evaluation_metric in ("rouge_l", "meteor") and max(len(text.split()), len(reference.split())) > (
        MAX_WORDS_QUADRATIC
    ):
        errors.truncated_observation_error = True
        problems.append(f"{where}: {grader.evaluation_metric} takes at most {MAX_WORDS_QUADRATIC} words a text")
        return 0.0
    return similarity(text, reference, grader.evaluation_metric)


def python_sample(model_sample: str) -> dict[str, Any]:
    """OpenAI's ``sample`` of a python grader, for a model sample that is text: ``output_json`` is None unless the text
    is JSON; no tool calls; one choice, the assistant's message."""
    try:
        output_json = json.loads(model_sample)
    except (ValueError, RecursionError):
        output_json = None
    message = {"role": "assistant", "content": model_sample}
    return {
        "output_text": model_sample,
        "output_json": output_json,
        "output_tools": [],
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def _run_python(
    grader: PythonGrader, ctx: _Context, where: str, errors: GradeErrors, problems: list[str], limits: sandbox.Limits
) -> float:
    outcome = ctx.python.get(id(grader))
    if outcome is None:
        try:
            outcome = sandbox.run_python(grader.source, python_sample(ctx.sample), ctx.item, limits)
        except sandbox.SandboxUnavailable as e:
            raise _no_sandbox(str(e), where) from None
    if outcome.reward is not None:
        return outcome.reward
    if outcome.server_error is not None:
        errors.python_grader_server_error = True
        errors.python_grader_server_error_type = "sandbox_error"
        problems.append(f"{where}: {outcome.server_error}")
        return 0.0
    details = outcome.error or "grade() failed"
    errors.python_grader_runtime_error = True
    named = f"{grader.name}: {details}" if errors.python_grader_runtime_error_details else details
    errors.python_grader_runtime_error_details = "\n".join(
        d for d in (errors.python_grader_runtime_error_details, named) if d
    )[-sandbox.MAX_DETAILS_CHARS :]
    problems.append(f"{where}: {details}")
    return 0.0


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
