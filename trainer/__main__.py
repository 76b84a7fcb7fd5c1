"""``python -m trainer --spec <path | object_store_url#key>``: the trainer container's entrypoint (the store URL may be
a broker's, ``tunery-broker://<address>/<job>``: trainer/brokered.py). The spec's ``task`` says what the run does:
``fine_tune`` trains (trainer/run.py), ``evaluation`` writes one eval report of an existing model
(trainer/evaluate.py), ``export`` merges an existing model into its base as one file (trainer/export_task.py); all
report over the same channel and end the same ways.

Exit codes: 0 succeeded; 1 failed (``Finished(succeeded=False)`` was reported); 2 bad command line;
3 stopped because the control plane asked (cancel, or it rejected this run); 4 paused or preempted (SIGTERM during
training): a resume state was written at the step it stopped at; 143 SIGTERM before training started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from types import FrameType

# Never reach for a model hub or telemetry, whatever the environment says.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from tunery.grpc_tls import channel_credentials_from_env  # noqa: E402
from tunery.jobspec import RUN_TOKEN_ENV  # noqa: E402
from tunery.jobstate import JobKind  # noqa: E402
from tunery.storage import ObjectStore  # noqa: E402

from .errors import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE, RunStopped, TrainerError, one_line  # noqa: E402
from .orphan import ORPHANED, watch_parent_from_env  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Run one Tunery fine-tuning job.")
    parser.add_argument("--spec", required=True, help="JobSpec: a local JSON path or <object_store_url>#<key>")
    parser.add_argument(
        "--resume-from",
        default=None,
        help='continue from a resume state: "latest" or a state prefix (overrides the JobSpec\'s resume_from)',
    )
    args = parser.parse_args(argv)

    from .brokered import open_trainer_store
    from .reporter import Reporter
    from .run import StopSignal, configure_logging, load_spec, log, run, spec_summary

    configure_logging()
    stop = StopSignal()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        first = stop.reason is None
        # Preempted during training: checkpoint at the next step boundary, then exit (EXIT_PREEMPTED).
        stop.set("preempted" if stop.in_training else "terminated")
        log.warning("signal %d: stopping %s", signum, "at the next step boundary" if stop.in_training else "now")
        if not (first and stop.in_training):
            raise RunStopped("terminated")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    watch_parent_from_env()  # a local run whose server died stops as if preempted (trainer/orphan.py)

    # From the backend, for this run alone; not left for child processes. It is the run's credential on the reporting
    # channel and, for a brokered trainer, its only way to its objects (trainer/brokered.py).
    run_token = os.environ.pop(RUN_TOKEN_ENV, "")
    credentials = channel_credentials_from_env(dict(os.environ))  # TLS when a CA is given (tunery/grpc_tls.py)
    stores: dict[str, ObjectStore] = {}

    def store_at(url: str) -> ObjectStore:
        if url not in stores:
            stores[url] = open_trainer_store(url, run_token, credentials)
        return stores[url]

    try:
        spec = load_spec(args.spec, store_at)
        store = store_at(spec.object_store)
    except Exception as e:
        traceback.print_exc()
        log.error("cannot read the job spec %s: %s", args.spec, one_line(str(e)))
        return EXIT_USAGE

    if args.resume_from:
        spec = spec.model_copy(update={"resume_from": args.resume_from})
    log.info("job spec: %s", spec_summary(spec))
    reporter = Reporter(
        spec.reporting_address,
        spec.job_id,
        run_token,
        credentials=credentials,
        on_stop=stop.set,
        abort_wait=lambda: stop.reason is not None,
    )
    try:
        if spec.task == JobKind.evaluation:
            from .evaluate import evaluate

            evaluation = evaluate(spec, reporter, stop, store)
        elif spec.task == JobKind.export:
            from .export_task import export

            exported = export(spec, reporter, stop, store)
        else:
            result = run(spec, reporter, stop, store)
    except RunStopped as e:
        log.warning("run stopped (%s); not reporting success", e.reason)
        # A paused or preempted run's last checkpoint report must get through; a cancelled one has nothing to say,
        # nor has an orphan anyone to say it to (the run resuming from its state reports what it could not).
        reporter.close(timeout=10.0 if e.exit_code == EXIT_PREEMPTED and not ORPHANED.is_set() else 2.0)
        return e.exit_code
    except Exception as e:
        traceback.print_exc()
        if isinstance(e, TrainerError):
            code, message, param = e.code, e.message, e.param or ""
        else:
            code, message, param = "training_error", one_line(f"{type(e).__name__}: {e}"), ""
        log.error("run failed: %s: %s", code, message)
        with contextlib.suppress(RunStopped):
            reporter.finished(False, error_code=code, error_message=message, error_param=param)
        reporter.close(timeout=5.0)
        return EXIT_FAILED

    if spec.task == JobKind.evaluation:
        try:
            delivered = reporter.finished(True, results_key=evaluation.report_key)
        except RunStopped:
            delivered = False
        if not delivered:
            log.error(
                "could not report success to %s; the report is at %s", spec.reporting_address, evaluation.report_key
            )
        reporter.close(timeout=10.0)
        log.info("finished: the evaluation took %.1fs", evaluation.seconds)
        return EXIT_OK

    if spec.task == JobKind.export:
        try:
            delivered = reporter.finished(True, results_key=exported.key)
        except RunStopped:
            delivered = False
        if not delivered:
            log.error("could not report success to %s; the export is at %s", spec.reporting_address, exported.key)
        reporter.close(timeout=10.0)
        log.info("finished: the export took %.1fs (%d bytes)", exported.seconds, exported.bytes)
        return EXIT_OK

    try:
        delivered = reporter.finished(
            True,
            model_prefix=result.model_prefix,
            results_key=result.results_key,
            trained_tokens=result.trained_tokens,
        )
    except RunStopped:
        delivered = False
    if not delivered:
        log.error(
            "could not report success to %s; the final model is at %s", spec.reporting_address, result.model_prefix
        )
    reporter.close(timeout=10.0)
    log.info("finished: %d steps, %d trained tokens", result.total_steps, result.trained_tokens)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
