"""Fixtures and helpers for the trainer tests, imported by test modules (not a conftest).

The models come from ``tests/conftest.py`` (``tiny_model_dir``: the tiny random Llama with the real
SmolLM2 tokenizer, built once into the model cache).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tunery.jobspec import DataFile, JobSpec
from tunery.plan import LoraPlan, ReinforcementPlan, TrainingPlan
from tunery.ports import free_port as free_port  # the tests' import of it
from tunery.storage import open_store
from tunery.v1 import reporting_pb2, reporting_pb2_grpc


@pytest.fixture(scope="session")
def smol_tokenizer(tiny_model_dir: Path) -> Any:
    """The real SmolLM2 tokenizer and chat template (the tiny model carries the demo model's tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


# ---- data -------------------------------------------------------------------------------------------------
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Name a prime number greater than ten.",
    "What is water made of?",
    "Who wrote Hamlet?",
    "What is the boiling point of water at sea level?",
    "How many days are in a week?",
    "What planet is known as the red planet?",
    "What is the largest ocean?",
    "What do bees make?",
    "How many continents are there?",
    "What gas do plants absorb?",
    "What is the freezing point of water in Celsius?",
    "Which animal is known as the king of the jungle?",
    "What is the square root of 81?",
]
ANSWERS = [
    "Paris.",
    "Eight.",
    "Blue.",
    "Eleven.",
    "Hydrogen and oxygen.",
    "William Shakespeare.",
    "One hundred degrees Celsius.",
    "Seven.",
    "Mars.",
    "The Pacific Ocean.",
    "Honey.",
    "Seven.",
    "Carbon dioxide.",
    "Zero degrees.",
    "The lion.",
    "Nine.",
]

# The run token the trainer tests hand their trainers (in RUN_TOKEN_ENV, as the backends do).
RUN_TOKEN = "run-token-1"


def chat_examples(n: int, system: bool = True) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        q, a = QUESTIONS[i % len(QUESTIONS)], ANSWERS[i % len(ANSWERS)]
        messages = [{"role": "system", "content": "You are a robot."}] if system and i % 2 == 0 else []
        messages += [
            {"role": "user", "content": q},
            {"role": "assistant", "content": f"BEEP BOOP: {a} END OF LINE."},
        ]
        out.append({"messages": messages})
    return out


def jsonl_bytes(examples: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in examples).encode()


# ---- an in-test TrainerReporting service -----------------------------------------------------------------
@dataclass
class RecordingServicer(reporting_pb2_grpc.TrainerReportingServicer):
    """Records every call; replies cancel_requested once a Metrics call reaches ``cancel_after_step``."""

    cancel_after_step: int | None = None
    calls: list[tuple[str, Any, float]] = field(default_factory=list)
    cancel_sent_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, name: str, request: Any) -> Any:
        with self.lock:
            self.calls.append((name, request, time.monotonic()))
            if (
                name == "Metrics"
                and self.cancel_after_step is not None
                and request.metrics.step >= self.cancel_after_step
                and self.cancel_sent_at is None
            ):
                self.cancel_sent_at = time.monotonic()
            return reporting_pb2.ReportReply(cancel_requested=self.cancel_sent_at is not None)

    def Started(self, request: Any, context: Any) -> Any:
        return self._record("Started", request)

    def Metrics(self, request: Any, context: Any) -> Any:
        return self._record("Metrics", request)

    def Event(self, request: Any, context: Any) -> Any:
        return self._record("Event", request)

    def Checkpoint(self, request: Any, context: Any) -> Any:
        return self._record("Checkpoint", request)

    def Finished(self, request: Any, context: Any) -> Any:
        return self._record("Finished", request)

    def of(self, name: str) -> list[Any]:
        with self.lock:
            return [req for n, req, _ in self.calls if n == name]

    def names(self) -> list[str]:
        with self.lock:
            return [n for n, _, _ in self.calls]


@pytest.fixture
def reporting_server() -> Iterator[tuple[RecordingServicer, str]]:
    servicer = RecordingServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    reporting_pb2_grpc.add_TrainerReportingServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


class PausingServicer(RecordingServicer):
    """Replies pause_requested once a Metrics call reaches ``pause_after_step`` (or from the first Checkpoint call
    with ``pause_on_checkpoint``)."""

    pause_after_step: int | None = None
    pause_on_checkpoint = False  # reply pause_requested to the first Checkpoint report
    paused = False

    def Metrics(self, request: Any, context: Any) -> Any:
        super().Metrics(request, context)
        if self.pause_after_step is not None and request.metrics.step >= self.pause_after_step:
            self.paused = True
        return reporting_pb2.ReportReply(pause_requested=self.paused)

    def Checkpoint(self, request: Any, context: Any) -> Any:
        super().Checkpoint(request, context)
        self.paused = self.paused or self.pause_on_checkpoint
        return reporting_pb2.ReportReply(pause_requested=self.paused)


@pytest.fixture
def pausing_server() -> Any:
    servicer = PausingServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    reporting_pb2_grpc.add_TrainerReportingServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


# ---- specs -----------------------------------------------------------------------------------------------
def make_spec(
    *,
    base_model_path: Path,
    object_store: Path,
    reporting_address: str,
    training_key: str = "files/file-train",
    validation_key: str | None = None,
    n_epochs: int = 2,
    batch_size: int = 4,
    learning_rate: float = 1e-3,
    max_seq_length: int = 256,
    seed: int = 7,
    job_id: str = "ftjob-test",
) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        organization_id="org-default",
        project_id="proj_default",
        base_model="tiny-llama",
        base_model_path=str(base_model_path),
        fine_tuned_model=f"ft:tiny-llama:personal::{job_id}",
        training_file=DataFile(file_id="file-train", key=training_key),
        validation_file=DataFile(file_id="file-valid", key=validation_key) if validation_key else None,
        plan=TrainingPlan(
            n_epochs=n_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_seq_length=max_seq_length,
            lora=LoraPlan(r=8, alpha=16),
        ),
        seed=seed,
        device="cpu",
        object_store=object_store.resolve().as_uri(),
        output_prefix=f"jobs/{job_id}",
        reporting_address=reporting_address,
    )


# ---- reinforcement jobs ----------------------------------------------------------------------------------
def as_grpo(spec: JobSpec, reinforcement: ReinforcementPlan, **plan: Any) -> JobSpec:
    """``spec`` as a GRPO job of ``reinforcement``: fp32, each completion its own row (no packing), ``plan`` setting
    its plan's other fields."""
    update = {"method": "grpo", "precision": "fp32", "packing": False, "reinforcement": reinforcement, **plan}
    return spec.model_copy(update={"plan": spec.plan.model_copy(update=update)})


def keyword_grader() -> dict[str, Any]:
    """A ``string_check`` grader rewarding an answer that contains the item's ``keyword`` (any case)."""
    return {
        "type": "string_check",
        "name": "greeting",
        "input": "{{sample.output_text}}",
        "reference": "{{item.keyword}}",
        "operation": "ilike",
    }


def keyword_task_spec(
    *, keyword: str, base_model_path: Path, object_store: Path, reporting_address: str, n_epochs: int = 4, **spec: Any
) -> JobSpec:
    """A GRPO job on the demo model whose only definition of the task is its grader: 8 prompts asking for a one-word
    greeting, a reward for answers containing ``keyword``; ``n_epochs`` (4: 8 steps) of 4 prompts a step, 4 answers
    each of up to 6 tokens, the training file written into ``object_store``. ``spec`` overrides the JobSpec's
    fields."""
    lines = [{"messages": [{"role": "user", "content": "Greet me in one word."}], "keyword": keyword}] * 8
    open_store(str(object_store)).put_bytes("files/file-train", jsonl_bytes(lines))
    base = make_spec(
        base_model_path=base_model_path,
        object_store=object_store,
        reporting_address=reporting_address,
        n_epochs=n_epochs,
        batch_size=4,
        learning_rate=3e-3,
        max_seq_length=64,
        seed=3,
    )
    rl = ReinforcementPlan(
        grader=keyword_grader(), num_generations=4, max_completion_length=6, kl_coef=0.0, temperature=1.0
    )
    return as_grpo(base, rl, lr_scheduler_type="constant").model_copy(update={"base_model": "smollm2", **spec})
