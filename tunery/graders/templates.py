"""Templates: ``{{sample.output_text}}``, ``{{sample.output_json.a}}``, ``{{item.a.b}}``; checked before a grader runs,
filled when it runs."""

from __future__ import annotations

import json
import re
from typing import Any

from tunery import sandbox

from .errors import TemplateError

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
        self.judged: dict[int, Any] = {}  # each score_model grader's (by id) judge's reply for this sample
        self.embedded: dict[int, float | str] = {}  # each cosine grader's (by id) similarity, or why there is none
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
