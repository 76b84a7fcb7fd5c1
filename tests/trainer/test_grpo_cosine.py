"""Reinforcement rewards from a ``text_similarity`` grader's ``cosine`` metric: the embedding model loaded in the
trainer (trainer/judge.py's TransformersEmbedder) from the folder the JobSpec names (``JobSpec.embedding_model``,
resolved by the scheduler: tests/scheduler/test_specs.py), embedding with tunery.embeddings.embed, the function the
API's embedded engine uses (tests/api/test_graders_cosine.py). A unit test of GRPO's reward function: no training
run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serving.engine import EmbeddedEngine
from serving.protocol import ModelRef
from tests.conftest import TINY
from trainer.errors import TrainerError
from trainer.judge import TransformersEmbedder
from trainer.methods.grpo import GRPO, grader_reward
from tunery.graders import parse_grader
from tunery.jobspec import EmbeddingSpec
from tunery.plan import ReinforcementPlan, TrainingPlan
from tunery.storage import open_store

COSINE = {
    "type": "text_similarity",
    "name": "meaning",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "evaluation_metric": "cosine",
}
MULTI = {
    "type": "multi",
    "name": "both",
    "graders": {"meaning": COSINE, "exact": {**COSINE, "name": "exact", "evaluation_metric": "fuzzy_match"}},
    "calculate_output": "meaning - 0 * exact",
}


def test_the_reward_function_computes_cosine_with_the_trainers_embedding_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    embedder = TransformersEmbedder(EmbeddingSpec(model=TINY, path=str(tiny_model_dir)), "cpu", torch.float32)
    label = "The capital of France is Paris."
    completions = [[{"role": "assistant", "content": text}] for text in (label, "zebra 1234 !!", label)]
    items = [json.dumps({"label": label})] * 3
    for grader in (COSINE, MULTI):
        reward = grader_reward(parse_grader(grader), embedder=embedder)
        rewards = reward(prompts=[[]] * 3, completions=completions, item=items)
        assert rewards[0] == pytest.approx(1.0, abs=1e-5) and rewards[2] == pytest.approx(1.0, abs=1e-5)
        assert -1.0 <= rewards[1] < rewards[0] - 1e-3
    # The API's embedded engine embeds with the same function: the same vectors, so the same rewards.
    engine = EmbeddedEngine(open_store(str(tmp_path / "objects")), tmp_path / "cache", device="cpu")
    try:
        served = engine.embed(ModelRef(base_name=TINY, base_path=str(tiny_model_dir)), [label, "zebra 1234 !!"])
    finally:
        engine.close()
    for a, b in zip(served.vectors, embedder.embed([label, "zebra 1234 !!"]), strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_a_cosine_grader_without_an_embedding_model_in_the_spec_fails_the_run() -> None:
    rl = ReinforcementPlan(grader=MULTI, num_generations=2, max_completion_length=4, kl_coef=0.0, temperature=1.0)
    plan = TrainingPlan(method="grpo", n_epochs=1, batch_size=2, learning_rate=1e-4, reinforcement=rl)
    with pytest.raises(TrainerError) as e:
        GRPO().trainer_extra(None, plan)
    assert e.value.param == "method.reinforcement.grader.graders.meaning.evaluation_metric"
    assert "embedding model" in str(e.value)
