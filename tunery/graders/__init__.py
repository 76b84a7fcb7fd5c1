"""OpenAI's graders: their typed objects, the checks of one before it runs, and the grading of one model sample
against one dataset item. The API's ``/v1/fine_tuning/alpha/graders/*`` and the reinforcement trainer use it
(docs/graders.md); no torch.

- Templates: ``{{sample.output_text}}``, ``{{sample.output_json}}`` (or a path into it, ``{{sample.output_json.a.b}}``),
  ``{{item}}`` and ``{{item.a.b}}``; spaces inside the braces are allowed, a number in a path indexes a list. A string
  is put in as it is, any other value as its JSON. A reference to anything else is refused when the grader is checked;
  a reference the sample or item does not have is found when it runs (``invalid_variable_error``, or
  ``sample_parse_error`` when the sample is not JSON).
- ``string_check``: eq, ne, like (contains, case-sensitive), ilike (contains, ignoring case); 1 or 0.
- ``text_similarity``: fuzzy_match (rapidfuzz's normalised Indel similarity), bleu (sacrebleu's sentence BLEU / 100),
  gleu (NLTK's sentence GLEU), meteor (NLTK's METEOR with exact and Porter-stem matches only: its WordNet synonym
  stage needs data that is not shipped, so it matches no synonyms), rouge_1..rouge_5 and rouge_l (Google's
  ``rouge-score``, F-measure, no stemming). ``cosine``: the cosine similarity of the two texts' embeddings by the
  embedding model (``TUNERY_EMBEDDING_MODEL``, :class:`Embedder`, :func:`tunery.embeddings.embed`); refused where
  none is configured.
- ``multi``: named sub-graders and a ``calculate_output`` formula, evaluated on floats by a walk of its syntax tree
  (never ``eval``): numbers, the sub-graders' names, ``+ - * /``, ``**`` or ``^`` for a power (binding as one),
  unary minus, parentheses and min, max, abs, floor, ceil, exp, sqrt, log; on floats bounded by ±1e15, so
  ``10 ** 10 ** 10`` is refused at once instead of computed for hours.
- ``python``: ``grade(sample, item)`` of the source, run in an isolated process by tunery/sandbox.py (namespaces without
  network, Landlock, seccomp, resource limits); ``sample`` is ``output_text``, ``output_json`` (the sample parsed, or
  None), ``output_tools`` (none) and ``choices`` (one assistant message). What the code does wrong (it raises, returns
  no finite number, runs out of time or memory) is ``python_grader_runtime_error`` with its details and a reward of 0.
  Refused (:class:`GraderNotRunnable`) where no sandbox can be made on the machine, never run without one.
- ``score_model``: its messages rendered per sample and sent to a judge model Tunery serves (:class:`Judge`: the
  serving backend on the API, the model loaded in-process in the trainer), the reply read as a number
  (:func:`parse_score`) and clamped into ``range``; no number is the range's minimum and ``model_grader_parse_error``,
  a judge that fails ``model_grader_server_error``. ``label_model`` (inside a ``multi`` grader, as OpenAI's schema
  has it): the same judge, its reply read as one of ``labels`` (:func:`parse_label`), 1 for a passing label, else 0.

The modules: :mod:`.errors` (bounds and errors), :mod:`.objects` (the typed objects and their checks),
:mod:`.templates`, :mod:`.formulas`, :mod:`.metrics` (string_check and text_similarity), :mod:`.judges` (score_model's
judge) and :mod:`.grading`.
"""

from __future__ import annotations

from .errors import (
    MAX_FORMULA_CHARS,
    MAX_FORMULA_DEPTH,
    MAX_JUDGE_TOKENS,
    MAX_MAGNITUDE,
    MAX_PYTHON_SOURCE_CHARS,
    MAX_SUB_GRADERS,
    MAX_TEXT_CHARS,
    MAX_WORDS_QUADRATIC,
    FormulaError,
    GraderError,
    GraderNotRunnable,
    TemplateError,
)
from .formulas import (
    FUNCTIONS,
    Formula,
    parse_formula,
)
from .grading import (
    ERROR_FLAGS,
    GradeErrors,
    GradeMetadata,
    GradeResult,
    check_runnable,
    cosine_graders,
    pass_threshold,
    python_sample,
    run_grader,
    run_graders,
)
from .judges import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_RANGE,
    Embedder,
    Judge,
    JudgeReply,
    JudgeSampling,
    Message,
    ModelGrader,
    model_graders,
    parse_label,
    parse_score,
    score_range,
)
from .metrics import (
    similarity,
    string_check,
)
from .objects import (
    SIMILARITY_METRICS,
    AnyGrader,
    AudioData,
    ContentPart,
    EvalItem,
    Grader,
    GraderObject,
    InputAudio,
    InputImage,
    InputText,
    LabelModelGrader,
    MultiGrader,
    OutputText,
    PythonGrader,
    SamplingParams,
    ScoreModelGrader,
    SimilarityMetric,
    StringCheckGrader,
    SubGrader,
    TextSimilarityGrader,
    check_grader,
    parse_grader,
)
from .templates import (
    SAMPLE_FIELDS,
    check_template,
    render,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_RANGE",
    "ERROR_FLAGS",
    "FUNCTIONS",
    "MAX_FORMULA_CHARS",
    "MAX_FORMULA_DEPTH",
    "MAX_JUDGE_TOKENS",
    "MAX_MAGNITUDE",
    "MAX_PYTHON_SOURCE_CHARS",
    "MAX_SUB_GRADERS",
    "MAX_TEXT_CHARS",
    "MAX_WORDS_QUADRATIC",
    "SAMPLE_FIELDS",
    "SIMILARITY_METRICS",
    "AnyGrader",
    "AudioData",
    "ContentPart",
    "Embedder",
    "EvalItem",
    "Formula",
    "FormulaError",
    "GradeErrors",
    "GradeMetadata",
    "GradeResult",
    "Grader",
    "GraderError",
    "GraderNotRunnable",
    "GraderObject",
    "InputAudio",
    "InputImage",
    "InputText",
    "Judge",
    "JudgeReply",
    "JudgeSampling",
    "LabelModelGrader",
    "Message",
    "ModelGrader",
    "MultiGrader",
    "OutputText",
    "PythonGrader",
    "SamplingParams",
    "ScoreModelGrader",
    "SimilarityMetric",
    "StringCheckGrader",
    "SubGrader",
    "TemplateError",
    "TextSimilarityGrader",
    "check_grader",
    "check_runnable",
    "check_template",
    "cosine_graders",
    "model_graders",
    "parse_formula",
    "parse_grader",
    "parse_label",
    "parse_score",
    "pass_threshold",
    "python_sample",
    "render",
    "run_grader",
    "run_graders",
    "score_range",
    "similarity",
    "string_check",
]
