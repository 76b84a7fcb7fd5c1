"""On-demand evaluations (``/v1/tunery/evaluations``, Tunery's extension, docs/evals.md): the eval report of an
existing ``ft:`` model or checkpoint model against a file, as a short job of its own, so two versions can be
compared on the same data. OpenAI has no such object: the shapes follow its conventions (``object``,
``created_at``, cursor lists, a job's ``status`` and ``error``) and every request field is Tunery's, so an unknown one
is a 400. An evaluation is never a fine-tuning job: ``GET /v1/fine_tuning/jobs`` does not list it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api.protocol.base import CursorPage, Name, OpenAIResponse, PageRequest, TuneryExtension
from api.protocol.jobs import FineTuningJobError
from tunery.evalreport import ReportOptions, ReportSummary
from tunery.graders import Grader
from tunery.jobstate import JobStatus
from tunery.plan import ReinforcementOptions


class CreateEvaluationRequest(TuneryExtension):
    model: Name = Field(
        description="The fine-tuned model (ft:...) or checkpoint model (ft:...:ckpt-step-N) to evaluate."
    )
    file: Name = Field(
        description="A file of the project (purpose fine-tune): chat examples, or preference pairs (then also DPO's "
        "implicit rewards), scored as a job's validation file is; or reinforcement prompts, whose sampled answers "
        "are graded (the report's reward section) by `grader`, or for a model a reinforcement job made, by its job's."
    )
    grader: dict[str, Any] | None = Field(
        None,
        description="A grader (OpenAI's string_check, text_similarity, python, score_model or multi object, as a "
        "reinforcement job's) for the answers the base and the model sample to a file of reinforcement prompts, "
        "instead of the grader of the job that made the model; any fine-tuned model may be graded so. A reinforcement "
        "job's model samples as in its job; another model as tunery.reinforcement's defaults say (up to "
        f"{ReinforcementOptions().max_completion_length} tokens an answer, temperature "
        f"{ReinforcementOptions().temperature}).",
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Picks the sample prompts; random when unset.")
    eval: ReportOptions | None = Field(
        None, description="What the report measures (a job's tunery.eval, less the gate)."
    )


class ListEvaluationsRequest(PageRequest):
    pass


class Evaluation(OpenAIResponse):
    """An evaluation: a short job (``validating_files`` -> ``queued`` -> ``running`` -> ``succeeded``, or ``failed``
    or ``cancelled``) whose result is one eval report, ``report``'s file."""

    id: str
    object: Literal["tunery.evaluation"] = "tunery.evaluation"
    created_at: int
    finished_at: int | None
    status: JobStatus
    model: str = Field(description="The model evaluated")
    base_model: str = Field(description="Its base model: the report's baseline")
    file: str = Field(description="The file it is evaluated on")
    seed: int
    eval: ReportOptions
    grader: Grader | None = Field(description="The grader it was given (null: its model's job's, if any)")
    error: FineTuningJobError | None
    report: ReportSummary | None = Field(description="The report's figures and file, once written")
    result_files: list[str] = Field(description="The report (purpose fine-tune-results), once written")


class EvaluationList(CursorPage[Evaluation]):
    """The project's evaluations, newest first."""
