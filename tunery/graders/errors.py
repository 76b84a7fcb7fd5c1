"""The bounds on what one grader may ask for, and the errors of a grader that cannot run as sent."""

from __future__ import annotations

# Bounds on what one grader may ask for: a formula's length and depth, a sub-grader count, a text's length (the
# similarity metrics are quadratic in it at worst), and the size of any number a formula computes.
MAX_FORMULA_CHARS = 1024
MAX_FORMULA_DEPTH = 32
MAX_SUB_GRADERS = 32
MAX_TEXT_CHARS = 65_536
MAX_WORDS_QUADRATIC = 1_000  # rouge_l and meteor align every word with every word, in Python
MAX_PYTHON_SOURCE_CHARS = 256 * 1024
MAX_MAGNITUDE = 1e15
MAX_JUDGE_TOKENS = 4096  # a score_model's max_completions_tokens


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
    """A well-formed grader this server cannot run: a cosine metric without an embedding model, a python grader
    where its sandbox is unavailable, a model grader whose judge it cannot run."""

    code = "grader_not_supported"
