"""Where a job's objects live in the object store: the one home of the key layout. The scheduler decides a run's
keys from it, the trainer writes under them, and the reporting service refuses a report that names any other.

    jobs/<job id>/spec.json                 the JobSpec of the current run
    jobs/<job id>/checkpoints/step-<N>/     a checkpoint (adapter or whole model, manifest last)
    jobs/<job id>/model/                    the final model
    <checkpoint or model prefix>/eval_report.json   its eval report (tunery/evalreport.py)
    jobs/<job id>/results.csv               the results file
    jobs/<job id>/resume/step-<N>/          resume states (tunery/resume.py)
    jobs/<job id>/trainer.log               the trainer's log, kept when the run ends
    jobs/<evaluation id>/eval_report.json   an evaluation's report (a job of kind evaluation: no model of its own)
    jobs/<export id>/export/model.tar.gz    an export's merged model (a job of kind export), or .../model.gguf
"""

from __future__ import annotations

from tunery.evalreport import REPORT_FILE
from tunery.exports import RESULT_SUFFIX


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def spec_key(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/spec.json"


def checkpoint_prefix(output_prefix: str, step: int) -> str:
    return f"{output_prefix.rstrip('/')}/checkpoints/step-{step}"


def model_prefix(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/model"


def eval_report_key(model_prefix: str) -> str:
    """The eval report beside a checkpoint or a final model (written before its manifest)."""
    return f"{model_prefix.rstrip('/')}/{REPORT_FILE}"


def results_key(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/results.csv"


def log_key(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/trainer.log"


def export_key(output_prefix: str, fmt: str) -> str:
    """An export's one result (tunery/exports.py): the merged folder as a tar.gz, or the GGUF file."""
    return f"{output_prefix.rstrip('/')}/export/model{RESULT_SUFFIX[fmt]}"
