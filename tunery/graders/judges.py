"""The judge of a model grader (``score_model``, ``label_model``): a model Tunery serves (a base model, or an ``ft:``
model the project may use), asked about each sample, and the reading of its reply as a score or a label.

One interface, :class:`Judge`, with two implementations: on the API the configured serving backend (the embedded
engine or vLLM: api/services/graders.py), in the reinforcement trainer the judge model loaded in-process
(trainer/judge.py), whose files the JobSpec names (``JobSpec.judges``, resolved by the scheduler). No torch here.

- The grader's ``input`` messages are templates, rendered per sample (:func:`conversation`); text content only
  (``input_text``, ``output_text`` or a string), an image or audio part is refused (:func:`not_runnable`).
- ``sampling_params``: greedy unless ``temperature`` is given (and above 0), ``top_p``, a seeded sampler when
  ``seed`` is given, at most ``max_completions_tokens`` (default :data:`DEFAULT_MAX_TOKENS`) tokens a reply.
- A score_model's reply is read by :func:`parse_score`, the score clamped into ``range`` (default ``[0, 1]``); a
  label_model's by :func:`parse_label`, one of its ``labels`` (its reward 1 when that label is a passing one). A
  label_model has no sampling parameters: greedy, :data:`DEFAULT_MAX_TOKENS` tokens.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import GraderNotRunnable
from .objects import (
    AnyGrader,
    InputText,
    LabelModelGrader,
    MultiGrader,
    OutputText,
    SamplingParams,
    ScoreModelGrader,
)
from .templates import _Context, render

DEFAULT_RANGE = (0.0, 1.0)
DEFAULT_MAX_TOKENS = 128  # a reply is a number; a judge that reasons first asks for more (max_completions_tokens)
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name; chat templates know "system"


@dataclass(frozen=True)
class JudgeSampling:
    """How the judge samples its replies (from the grader's ``sampling_params``)."""

    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_p <= 0

    @classmethod
    def of(cls, params: SamplingParams | None) -> JudgeSampling:
        if params is None:
            return cls()
        return cls(
            temperature=0.0 if params.temperature is None else float(params.temperature),
            top_p=1.0 if params.top_p is None else float(params.top_p),
            seed=params.seed,
            max_tokens=params.max_completions_tokens or DEFAULT_MAX_TOKENS,
        )


@dataclass(frozen=True)
class JudgeReply:
    """The judge's reply to one conversation: its text, or why there is none (``error``: the judge failed)."""

    text: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


Message = dict[str, str]


class Judge(Protocol):
    """The models that judge (``model``: the name the grader gives), each conversation answered once."""

    def complete(self, model: str, conversations: list[list[Message]], sampling: JudgeSampling) -> list[JudgeReply]:
        """One reply per conversation, in order. A failure of the judge is a reply with ``error`` (the grader's
        ``model_grader_server_error``), never an exception for one conversation."""
        ...


ModelGrader = ScoreModelGrader | LabelModelGrader


class Embedder(Protocol):
    """The embedding model of the ``cosine`` metric (``TUNERY_EMBEDDING_MODEL``): on the API the embedded engine
    (api/services/graders.py), in the reinforcement trainer the model loaded in-process (trainer/judge.py); both
    embed with :func:`tunery.embeddings.embed`."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        """The unit-length embedding of each text, in order. Raises when the model fails (each sample's
        ``other_error``)."""
        ...


# ---- the graders' judges ------------------------------------------------------------------------------------------
def model_graders(grader: AnyGrader, where: str = "grader") -> list[tuple[str, ModelGrader]]:
    """The model graders (score_model, label_model) of ``grader`` (itself, or a multi grader's sub-graders), with
    where each is."""
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return [(where, grader)]
    if isinstance(grader, MultiGrader):
        out = []
        for name, sub in grader.named().items():
            sub_where = f"{where}.graders" if not isinstance(grader.graders, dict) else f"{where}.graders.{name}"
            out += model_graders(sub, sub_where)
        return out
    return []


def score_range(grader: ScoreModelGrader) -> tuple[float, float]:
    return (float(grader.range[0]), float(grader.range[1])) if grader.range else DEFAULT_RANGE


def sampling(grader: ModelGrader) -> JudgeSampling:
    return JudgeSampling.of(grader.sampling_params if isinstance(grader, ScoreModelGrader) else None)


def not_runnable(grader: ModelGrader, where: str) -> GraderNotRunnable | None:
    """A model grader Tunery cannot run: content other than text (the models it serves read text)."""
    for i, message in enumerate(grader.input):
        parts = message.content if isinstance(message.content, list) else [message.content]
        for j, part in enumerate(parts):
            if not isinstance(part, str | InputText | OutputText):
                at = f"{where}.input[{i}].content" + (f"[{j}]" if isinstance(message.content, list) else "")
                return GraderNotRunnable(
                    f"The judge models Tunery serves read text only: '{at}' is {part.type}, which a {grader.type} "
                    "grader cannot send them.",
                    at,
                )
    return None


def conversation(grader: ModelGrader, ctx: _Context, where: str) -> list[Message]:
    """The grader's messages with their templates filled for one sample (raises ``_Unfilled`` for a reference the
    sample or item lacks)."""
    out = []
    for i, message in enumerate(grader.input):
        parts = message.content if isinstance(message.content, list) else [message.content]
        texts = [p if isinstance(p, str) else p.text for p in parts if isinstance(p, str | InputText | OutputText)]
        text = "\n".join(render(t, ctx, f"{where}.input[{i}].content") for t in texts)
        out.append({"role": ROLE_ALIASES.get(message.role, message.role), "content": text})
    return out


# ---- reading a reply ----------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?!\w)")  # not inside a word


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_score(text: str) -> float:
    """The score of a judge's reply, read as OpenAI's score model answers (a float), or a ``ValueError`` saying why
    the reply is none:

    1. the reply is a number (``0.8``, `` 1 ``, ``0.75.``);
    2. the reply is JSON: a number, or an object whose ``result`` (OpenAI's structured answer) or ``score`` is one;
    3. the reply holds exactly one number among its words (``Score: 0.8``); several (``8/10``, ``between 0 and 1``)
       are ambiguous, none is no score.

    NaN and infinities are no score."""
    stripped = text.strip().rstrip(".").strip()
    found: float | None = None
    try:
        found = float(stripped) if stripped and not stripped.lower().lstrip("+-").isalpha() else None
    except ValueError:
        found = None
    if found is None:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        found = _number(data.get("result", data.get("score")) if isinstance(data, dict) else data)
    if found is None:
        numbers = _NUMBER.findall(text)
        if len(numbers) > 1:
            shown = ", ".join(numbers[:5]) + (", ..." if len(numbers) > 5 else "")
            raise ValueError(f"the judge's reply holds several numbers ({shown}), not one score")
        if not numbers:
            raise ValueError("the judge's reply holds no number")
        found = float(numbers[0])
    if not math.isfinite(found):
        raise ValueError(f"the judge's reply is {found}, not a finite score")
    return found


def clamp(score: float, low: float, high: float) -> float:
    return min(max(score, low), high)


def _words(text: str) -> str:
    return " " + re.sub(r"\W+", " ", text.casefold()).strip() + " "


def parse_label(text: str, labels: list[str]) -> str:
    """The label of a judge's reply, one of ``labels``, or a ``ValueError`` saying why the reply is none:

    1. the reply is a label (``good``, `` good. ``), exactly or ignoring case when that names one label;
    2. the reply is JSON: a label as a string, or an object whose ``result`` (OpenAI's structured answer) or
       ``label`` is one;
    3. the reply holds exactly one of the labels as whole words, ignoring case (``The answer is good.``); several
       are ambiguous, none is no label."""
    stripped = text.strip().rstrip(".").strip()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        data = data.get("result", data.get("label"))
    for candidate in (stripped, data.strip() if isinstance(data, str) else None):
        if candidate is None:
            continue
        if candidate in labels:
            return candidate
        folded = [label for label in labels if label.casefold() == candidate.casefold()]
        if len(folded) == 1:
            return folded[0]
    words = _words(text)
    found = [label for label in labels if _words(label).strip() and _words(label) in words]
    if len(found) > 1:
        raise ValueError(f"the judge's reply names several labels ({', '.join(found[:5])}), not one")
    if not found:
        raise ValueError(f"the judge's reply names none of the labels ({', '.join(labels[:10])})")
    return found[0]
