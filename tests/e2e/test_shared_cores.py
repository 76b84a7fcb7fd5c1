"""The embedded server shares its cores between a local trainer and its chat engine (scheduler.cores): while the
engine answers chats, a trainer that took every core trains with one fewer from its next step, and takes it back
once the engine has been idle for TUNERY_SERVING_BUSY_SECONDS. A real trainer process, a real engine, the real
reporting channel between them."""

from __future__ import annotations

import re
import threading
import time

import pytest

from scheduler.cores import usable_cores
from tests.conftest import TINY, chat_lines
from tests.e2e.server_process import wait_for

CORES = usable_cores()


def wait_for_event(srv, job_id: str, pattern: str, timeout: float = 120) -> str:  # type: ignore[no-untyped-def]
    """The first of the job's events that matches ``pattern``, once there is one."""

    def seen() -> str | None:
        return next((m for m in srv.events(job_id) if re.search(pattern, m)), None)

    return wait_for(seen, timeout, f"an event matching {pattern!r}", every=0.2)


@pytest.mark.integration
@pytest.mark.skipif(CORES < 2, reason="one core: nothing to give the engine")
def test_a_local_trainer_gives_the_chat_engine_a_core_while_it_answers(tiny_server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = tiny_server_factory(trainer_threads=CORES, serving_busy_seconds=4)  # the trainer takes every core
    train = srv.client.files.create(file=("train.jsonl", chat_lines(400)), purpose="fine-tune")
    job = srv.client.fine_tuning.jobs.create(
        model=TINY,
        training_file=train.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 8}}},
    )
    try:
        wait_for_event(srv, job.id, r"^Step 2/")
        assert not [m for m in srv.events(job.id) if "CPU thread" in m]  # no chat yet: it keeps every core
        chats: list[int] = []
        chatting = threading.Event()
        chatting.set()

        def chat() -> None:  # one answer after another, as a user in the playground
            while chatting.is_set():
                answer = srv.client.chat.completions.create(
                    model=TINY, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0
                )
                chats.append(answer.usage.completion_tokens if answer.usage else 0)

        user = threading.Thread(target=chat, daemon=True)
        user.start()
        try:
            fewer = wait_for_event(srv, job.id, r"trains with \d+ CPU thread")
            assert f"trains with {CORES - 1} CPU thread" in fewer and f"(it had {CORES})" in fewer, fewer
            assert "chat engine is answering" in fewer
            time.sleep(2)  # still answering: no change back
            assert [m for m in srv.events(job.id) if "CPU thread" in m] == [fewer]
        finally:
            chatting.clear()
            user.join(timeout=60)
        assert chats and all(chats)
        step = int(re.search(r"From step (\d+)", fewer).group(1))  # type: ignore[union-attr]
        # Idle: after TUNERY_SERVING_BUSY_SECONDS the trainer takes every core back.
        back = wait_for_event(srv, job.id, rf"trains with {CORES} CPU threads \(it had {CORES - 1}\)", timeout=60)
        assert "chat engine is idle" in back
        assert int(re.search(r"From step (\d+)", back).group(1)) > step  # type: ignore[union-attr]
        assert srv.client.fine_tuning.jobs.retrieve(job.id).status == "running"
    finally:
        srv.client.fine_tuning.jobs.cancel(job.id)
        srv.wait_job(job.id, {"cancelled", "succeeded", "failed"}, timeout=60)
