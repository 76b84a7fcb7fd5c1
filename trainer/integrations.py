"""The experiment trackers a run logs to (docs/integrations.md): a W&B run and an MLflow run, from the JobSpec's
``integrations`` (their settings) and the trainer's environment (their secrets: WANDB_API_KEY, MLFLOW_TRACKING_*,
handed by the backend).

Each tracker gets what the job's events get, under the same names: every step's figures as they are reported
(``train_loss``, ``valid_loss``, ``learning_rate``, a method's own figures such as GRPO's rewards), the resolved
hyperparameters and the run's identity as its config (W&B) or params (MLflow), and the fine-tuned model's name at the
end. Our own small client of each library rather than transformers' ``report_to`` callbacks: those log the whole
TrainingArguments (temporary paths included) instead of the plan, name figures as each TRL trainer logs them, start a
new MLflow run on every resume, and raise into the training loop when the tracker fails.

A tracker never fails a job: every call runs on one background thread, in order (a slow or unreachable tracker never
stalls an optimizer step), and the first error of a tracker becomes one ``warn`` event of the job; that tracker is
then dropped and training goes on. Only the main process of a multi-process run logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from tunery.integrations import IntegrationsSpec, MlflowSpec, SecretName, WandbSpec, check_tracking_uri, default_tags
from tunery.jobspec import JobSpec

from .metrics import StepRow

log = logging.getLogger("tunery.trainer.integrations")

Outcome = Literal["succeeded", "failed", "stopped"]

MLFLOW_BATCH = 100  # params per log_batch request (MLflow's limit)
MLFLOW_DEFAULT_EXPERIMENT = "Default"
JOB_TAG = "tunery.job_id"  # the MLflow tag that finds the run of a job again (a resumed job continues it)
FINISH_TIMEOUT_S = 60.0
INIT_TIMEOUT_S = 30.0  # how long wandb.init may wait for its server  # how long the end of a run waits for its trackers
# MLflow retries a failed request for minutes by default: a tracker that is down should cost seconds.
MLFLOW_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def row_figures(row: StepRow) -> dict[str, float]:
    """A step's figures as its metrics event has them (None and NaN left out), the method's own included."""
    out = {k: float(v) for k, v in row.summary().items() if k not in ("step", "tokens", "seconds", "extra")}
    out.update({k: float(v) for k, v in row.extra.items()})
    return {k: v for k, v in out.items() if not math.isnan(v)}


def flat(prefix: str, value: Any) -> dict[str, str]:
    """Nested config as MLflow params: ``hyperparameters.lora.r`` -> ``"8"`` (lists and None as JSON)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value if isinstance(value, str) else json.dumps(value)}


class WandbTracker:
    name = "W&B"

    def __init__(self, spec: WandbSpec, job: JobSpec):
        self.spec, self.job = spec, job
        self.run: Any = None

    def start(self, config: dict[str, Any]) -> None:
        import wandb

        s = self.spec
        # A W&B server that does not answer costs the run 30 s of its tracker thread, not W&B's default 90.
        settings: dict[str, Any] = {
            "console": "off",
            "silent": True,
            "save_code": False,
            "init_timeout": INIT_TIMEOUT_S,
        }
        key = os.environ.get(SecretName.WANDB_API_KEY)
        if key:
            settings["api_key"] = key
        if s.base_url:
            settings["base_url"] = s.base_url
        if s.mode == "online" and not key:
            raise RuntimeError("no WANDB_API_KEY was handed to this run (the project's secret was deleted?)")
        self.run = wandb.init(
            project=s.project,
            entity=s.entity,
            name=s.name or self.job.job_id,
            id=s.run_id,
            resume="allow",  # a paused or crashed job's next run continues the same W&B run
            tags=[*s.tags, *default_tags(self.job.base_model, self.job.job_id)],
            config=config,
            mode=s.mode,
            # Its local files (offline: the run itself): WANDB_DIR, else the temporary folder (a read-only image).
            dir=os.environ.get("WANDB_DIR") or tempfile.gettempdir(),
            settings=wandb.Settings(**settings),
        )

    def log(self, row: StepRow) -> None:
        self.run.log(row_figures(row), step=row.step)

    def finish(self, outcome: Outcome, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        for k, v in summary.items():
            self.run.summary[k] = v
        self.run.finish(exit_code=0 if outcome == "succeeded" else 1)  # a stopped run resumes it later


class MlflowTracker:
    name = "MLflow"

    def __init__(self, spec: MlflowSpec, job: JobSpec):
        self.spec, self.job = spec, job
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, config: dict[str, Any]) -> None:
        for k, v in MLFLOW_HTTP_ENV.items():
            os.environ.setdefault(k, v)
        # Checked again here: the name may resolve elsewhere than when the job was created.
        check_tracking_uri(self.spec.tracking_uri, "tracking_uri", self.spec.allow_private)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.spec.tracking_uri)
        name = self.spec.experiment_name or MLFLOW_DEFAULT_EXPERIMENT
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{self.job.job_id}'")
        if found:  # a resumed job: its run goes on
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {JOB_TAG: self.job.job_id, "tunery.base_model": self.job.base_model, "mlflow.source.name": "tunery"}
            run = client.create_run(experiment_id, run_name=self.spec.run_name or self.job.job_id, tags=tags)
            self.run_id = run.info.run_id
            params = [Param(k, v[:6000]) for k, v in sorted(flat("", config).items())]
            for i in range(0, len(params), MLFLOW_BATCH):
                client.log_batch(self.run_id, params=params[i : i + MLFLOW_BATCH])
        self.client = client

    def log(self, row: StepRow) -> None:
        from mlflow.entities import Metric

        at = int(time.time() * 1000)
        metrics = [Metric(k, v, at, row.step) for k, v in row_figures(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, outcome: Outcome, summary: dict[str, Any]) -> None:
        if self.client is None or self.run_id is None:
            return
        for k, v in summary.items():
            self.client.set_tag(self.run_id, f"tunery.{k}", str(v))
        status = {"succeeded": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}[outcome]
        self.client.set_terminated(self.run_id, status=status)


_STOP = object()


class Trackers:
    """The run's trackers, each call on one background thread; a tracker's first error is one ``warn`` event and
    drops it (see the module)."""

    def __init__(self, trackers: list[Any], warn: Callable[[str, dict[str, Any] | None], None]):
        self.trackers = trackers
        self.warn = warn
        self.failed: list[str] = []
        self._queue: queue.Queue[Any] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="tunery-integrations", daemon=True)
        self._worker.start()

    @classmethod
    def of(cls, spec: JobSpec, warn: Callable[[str, dict[str, Any] | None], None]) -> Trackers | None:
        """The trackers of the spec's integrations; None when it has none, or in a process other than the run's
        main one (torchrun's RANK > 0)."""
        wanted: IntegrationsSpec | None = spec.integrations
        if wanted is None or os.environ.get("RANK", "0") != "0":
            return None
        trackers: list[Any] = []
        if wanted.wandb is not None:
            trackers.append(WandbTracker(wanted.wandb, spec))
        if wanted.mlflow is not None:
            trackers.append(MlflowTracker(wanted.mlflow, spec))
        return cls(trackers, warn) if trackers else None

    def start(self, config: dict[str, Any]) -> None:
        self._queue.put(("start", (config,)))

    def log(self, row: StepRow) -> None:
        self._queue.put(("log", (row,)))

    def close(self, outcome: Outcome, summary: dict[str, Any] | None = None, timeout: float = FINISH_TIMEOUT_S) -> None:
        """End every tracker's run (``stopped``: paused, preempted or cancelled; a paused job's next run continues
        it), waiting up to ``timeout`` seconds for what is queued."""
        self._queue.put(("finish", (outcome, summary or {})))
        self._queue.put(_STOP)
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("integrations: gave up waiting for the trackers after %.0fs", timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            method, args = item
            for tracker in list(self.trackers):
                try:
                    getattr(tracker, method)(*args)
                except Exception as e:  # a tracker never fails the run
                    self.trackers.remove(tracker)
                    self.failed.append(tracker.name)
                    message = f"{tracker.name} integration failed, training goes on without it: {_one_line(e)}"
                    log.warning("%s", message, exc_info=True)
                    self.warn(message, {"integration": tracker.name})


def _one_line(e: Exception) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text[:500]
