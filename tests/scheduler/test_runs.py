"""The run lifecycle (scheduler/runs.py): what a failed run tells the API client, and what it keeps for the operator."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.conftest import TINY, chat_lines


def test_a_trainer_that_dies_fails_its_job_without_showing_its_output(tiny_server_factory, tmp_path: Path):
    """The trainer's output can hold paths, hosts and the cluster's internals: the job's error says how the run
    ended; the output itself stays in the run's log object and the scheduler's log."""
    trainer = tmp_path / "dying-trainer"
    trainer.write_text("#!/bin/sh\necho 'Traceback: SECRET-DETAIL at /srv/private/keys'\nexit 3\n")
    trainer.chmod(trainer.stat().st_mode | stat.S_IXUSR)
    srv = tiny_server_factory(trainer_python=str(trainer))
    f = srv.client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id)
    job = srv.wait_job(job.id, {"failed"}, timeout=60)
    assert job.error.code == "training_error"
    assert "code 3" in job.error.message
    everything = srv.http.get(f"/v1/fine_tuning/jobs/{job.id}").text + str(srv.events(job.id))
    assert "SECRET-DETAIL" not in everything and "/srv/private" not in everything
    kept = srv.app.state.ctx.store.get_bytes(f"jobs/{job.id}/trainer.log")
    assert b"SECRET-DETAIL" in kept
