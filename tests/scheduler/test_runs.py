"""The run lifecycle (scheduler/runs.py): what a failed run tells the API client, and what it keeps for the operator."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.conftest import TINY, chat_lines
from tunery.jobspec import RUN_TOKEN_ENV


def test_a_trainer_that_dies_fails_its_job_without_showing_its_output_and_had_its_own_token(
    tiny_server_factory, tmp_path: Path
):
    """The trainer's output can hold paths, hosts and the cluster's internals: the job's error says how the run
    ended; the output itself stays in the run's log object and the scheduler's log."""
    trainer = tmp_path / "dying-trainer"
    token_file = tmp_path / "token"
    trainer.write_text(
        f'#!/bin/sh\necho "${RUN_TOKEN_ENV}" > {token_file}\n'
        "echo 'Traceback: SECRET-DETAIL at /srv/private/keys'\nexit 3\n"
    )
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
    # The run's token reached the trainer in its environment alone: the spec in the shared store holds none.
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert token not in srv.app.state.ctx.store.get_bytes(f"jobs/{job.id}/spec.json").decode()
