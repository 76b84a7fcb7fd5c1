"""The real thing: fine-tune SmolLM2-135M-Instruct on the bundled demo data through the OpenAI SDK and check
that the fine-tuned model answers held-out prompts in the trained format while the base model does not."""

from __future__ import annotations

import pytest

from tests.conftest import MODEL_CACHE, start_server
from tunery.demo import DEMO_HYPERPARAMETERS, SEED, demo_data
from tunery.settings import DEMO_MODEL

pytestmark = pytest.mark.slow


def answer(client, model: str, question: str) -> str:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=48
    )
    return r.choices[0].message.content or ""


def test_demo_model_learns_the_format(demo_model_dir, tmp_path):
    srv = start_server(tmp_path / "state", model_cache_dir=MODEL_CACHE, demo_model=True)
    try:
        client = srv.client
        assert DEMO_MODEL in {m.id for m in client.models.list().data}
        train, heldout = demo_data()
        with open(train, "rb") as fh:
            f = client.files.create(file=fh, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=DEMO_MODEL,
            training_file=f.id,
            suffix="beep-boop",
            seed=SEED,
            method={"type": "supervised", "supervised": {"hyperparameters": DEMO_HYPERPARAMETERS}},
        )
        job = srv.wait_job(job.id, {"succeeded", "failed", "cancelled"}, timeout=900)
        assert job.status == "succeeded", (job.error, srv.events(job.id))
        train_questions = {line for line in train.read_text().splitlines()}
        for q in heldout:
            assert all(q not in line for line in train_questions)  # really held out
            base, tuned = answer(client, DEMO_MODEL, q), answer(client, job.fine_tuned_model, q)
            assert tuned.startswith("BEEP BOOP:"), (q, tuned)
            assert "BEEP BOOP" not in base.upper(), (q, base)
    finally:
        srv.stop()
