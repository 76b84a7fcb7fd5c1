"""The ``score_model`` grader on Tunery's own models, through the official OpenAI SDK against a real server: the
grader's messages are rendered per sample and sent to the judge (a base model, or the project's ``ft:`` model) on the
embedded engine, its reply read as a number within ``range``; a judge another project owns, or none, is refused
at ``graders/run`` and at job creation, naming the grader's ``model``. Reading replies: tests/tunery/test_judges.py;
the trainer's judge: tests/trainer/test_grpo_judge.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.api.test_graders import refused, run
from tests.api.test_reinforcement import rft_lines
from tests.conftest import TINY, RunningServer
from tests.serving_fixtures import make_adapter
from tunery.db import FineTunedModel
from tunery.db.ops import now

BOOTSTRAP = "sk-tunery-bootstrap-0123456789abcdef"
MODEL = "ft:tiny-llama:personal:judge:AbCd1234"


def judge(model: str = TINY, text: str = "Rate {{sample.output_text}} against {{item.label}}", **extra: Any) -> dict:
    return {
        "type": "score_model",
        "name": "judge",
        "model": model,
        "input": [
            {"role": "developer", "content": "Answer with a score."},
            {"role": "user", "content": [{"type": "input_text", "text": text}]},
        ],
        "sampling_params": {"max_completions_tokens": 3},
        **extra,
    }


def test_a_judge_on_the_embedded_engine_scores_the_rendered_messages(server: RunningServer) -> None:
    """The tiny random judge answers blank lines (greedy, deterministic): no number, so the range's minimum and
    model_grader_parse_error, as OpenAI flags it; its tokens are those of the messages rendered with the sample and
    the item, the ones a chat completion of the same messages reads."""
    body = run(server, judge(range=[1, 5]), "Paris", {"label": "Lyon"})
    meta = body["metadata"]
    assert body["reward"] == 1.0 and meta["errors"]["model_grader_parse_error"]
    assert not any(v for k, v in meta["errors"].items() if k != "model_grader_parse_error")
    assert (meta["type"], meta["sampled_model_name"]) == ("score_model", TINY)
    usage = body["model_grader_token_usage_per_model"][TINY]
    rendered = [
        {"role": "system", "content": "Answer with a score."},
        {"role": "user", "content": "Rate Paris against Lyon"},
    ]
    chat = server.client.chat.completions.create(model=TINY, messages=rendered, max_tokens=3, temperature=0)  # type: ignore[arg-type]
    assert chat.usage is not None
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (chat.usage.prompt_tokens, 3)
    assert meta["token_usage"] == usage["total_tokens"] == usage["prompt_tokens"] + 3
    longer = run(server, judge(), "Paris, the capital of France on the Seine", {"label": "Lyon"})
    assert longer["model_grader_token_usage_per_model"][TINY]["prompt_tokens"] > usage["prompt_tokens"]
    assert longer["reward"] == 0.0  # the default range, [0, 1]

    # An item without the field is flagged before the judge is asked (no tokens); in a multi grader, the sub-grader's
    # flag is the multi grader's, its sub-reward the range's minimum.
    missing = run(server, judge(), "Paris", {"other": 1})
    assert missing["metadata"]["errors"]["invalid_variable_error"] and missing["metadata"]["token_usage"] is None
    multi = {"type": "multi", "name": "m", "graders": {"j": judge(range=[2, 3])}, "calculate_output": "j"}
    both = run(server, multi, "Paris", {"label": "Lyon"})
    assert both["reward"] == 0.0 and both["sub_rewards"] == {"j": 2.0}
    assert both["metadata"]["errors"]["model_grader_parse_error"]
    # label_model (inside a multi grader, as OpenAI's schema has it): the same judge; its blank reply is no label.
    labeller = {k: v for k, v in judge().items() if k not in ("type", "sampling_params")}
    labeller.update(type="label_model", labels=["good", "bad"], passing_labels=["good"])
    labelled = run(server, {**multi, "graders": {"l": labeller}, "calculate_output": "l"}, "Paris", {"label": "x"})
    assert labelled["reward"] == 0.0 and labelled["metadata"]["errors"]["model_grader_parse_error"]
    assert labelled["model_grader_token_usage_per_model"][TINY]["completion_tokens"] > 0


@dataclass
class World:
    srv: RunningServer
    keys: dict[str, str]

    def client(self, who: str) -> OpenAI:
        return self.srv.client.with_options(api_key=self.keys[who])


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("judge") / "adapter", seed=5)


@pytest.fixture
def world(tiny_server_factory: Callable[..., RunningServer], adapter_dir: Path) -> World:
    """Projects A and B; A has a fine-tuned model (a LoRA adapter on the tiny model)."""
    srv = tiny_server_factory(api_keys=BOOTSTRAP, max_concurrent_runs=0)
    admin = {"authorization": f"Bearer {BOOTSTRAP}"}
    projects: dict[str, str] = {}
    keys: dict[str, str] = {}
    for name in ("A", "B"):
        projects[name] = srv.http.post("/v1/organization/projects", json={"name": name}, headers=admin).json()["id"]
        made = srv.http.post(
            f"/v1/organization/projects/{projects[name]}/service_accounts",
            json={"name": f"{name}-owner", "role": "owner"},
            headers=admin,
        )
        keys[name] = made.json()["api_key"]["value"]
    ctx = srv.app.state.ctx
    prefix = "jobs/ftjob-judge/model/"
    ctx.store.put_dir(prefix, adapter_dir)
    with ctx.db.session() as s:
        s.add(
            FineTunedModel(
                id=MODEL,
                kind="fine_tuned",
                base_model=TINY,
                job_id="ftjob-judge",
                object_prefix=prefix,
                owned_by="personal",
                organization_id=ctx.settings.organization_id,
                project_id=projects["A"],
                created_at=now(),
            )
        )
    return World(srv, keys)


def test_the_judge_is_a_model_the_project_may_use(world: World) -> None:
    """A's fine-tuned model judges for A (its adapter loaded on the engine); for B it does not exist, at graders/run
    and at job creation, as an unknown model or a bad range does for anyone, naming the field."""
    a, b = world.client("A"), world.client("B")
    answer = a.fine_tuning.alpha.graders.run(grader=judge(MODEL), model_sample="x", item={"label": "y"})  # type: ignore[arg-type]
    assert answer.metadata.sampled_model_name == MODEL and not answer.metadata.errors.model_grader_server_error
    assert answer.model_grader_token_usage_per_model[MODEL]["completion_tokens"] > 0

    train = {
        name: c.files.create(file=("rft.jsonl", rft_lines(4)), purpose="fine-tune").id
        for name, c in (("A", a), ("B", b))
    }

    def create(client: OpenAI, grader: dict[str, Any], who: str) -> Any:
        method = {"type": "reinforcement", "reinforcement": {"grader": grader}}
        return client.fine_tuning.jobs.create(model=TINY, training_file=train[who], method=method)  # type: ignore[arg-type]

    multi = {"type": "multi", "name": "m", "graders": {"j": judge(MODEL)}, "calculate_output": "j"}
    assert create(a, judge(MODEL), "A").method.type == "reinforcement"
    assert create(a, multi, "A").status in ("validating_files", "queued")
    for model in (MODEL, "nope"):
        error = refused(lambda m=model: b.fine_tuning.alpha.graders.run(grader=judge(m), model_sample="x"))  # type: ignore[misc]
        assert (error["param"], error["code"]) == ("grader.model", "model_not_found")
        assert "does not exist or you do not have access to it" in error["message"]
        error = refused(lambda m=model: create(b, judge(m), "B"))  # type: ignore[misc]
        assert (error["param"], error["code"]) == ("method.reinforcement.grader.model", "model_not_found")
        error = refused(lambda m=model: create(b, {**multi, "graders": {"j": judge(m)}}, "B"))  # type: ignore[misc]
        assert error["param"] == "method.reinforcement.grader.graders.j.model"
    for bad, param in [
        ({"range": [1, 1]}, "range"),
        ({"range": [2, 1]}, "range"),
        ({"sampling_params": {"temperature": 3}}, "sampling_params.temperature"),
        ({"sampling_params": {"max_completions_tokens": 100_000}}, "sampling_params.max_completions_tokens"),
    ]:
        for call, where in [
            (lambda g=judge(**bad): a.fine_tuning.alpha.graders.validate(grader=g), "grader"),  # type: ignore[misc]
            (lambda g=judge(**bad): create(a, g, "A"), "method.reinforcement.grader"),  # type: ignore[misc]
        ]:
            error = refused(call)
            assert (error["param"], error["code"]) == (f"{where}.{param}", "invalid_grader"), bad
    image = judge()
    image["input"][1]["content"].append({"type": "input_image", "image_url": "https://example.com/a.png"})
    error = refused(lambda: a.fine_tuning.alpha.graders.run(grader=image, model_sample="x"))  # type: ignore[arg-type]
    assert (error["param"], error["code"]) == ("grader.input[1].content[1]", "grader_not_supported")
    with pytest.raises(openai.BadRequestError):
        create(a, image, "A")


@pytest.mark.slow
def test_the_demo_model_judges_what_the_rendered_prompt_asks(
    tiny_server_factory: Callable[..., RunningServer], tiny_model_dir: Path, demo_model_dir: Path
) -> None:
    """SmolLM2-135M-Instruct repeats the number it is given ("The number 0.75 is..."): the item's field and the
    sample reach it rendered; a score above the range is clamped to its maximum."""
    srv = tiny_server_factory(base_models={TINY: str(tiny_model_dir), "smollm2": str(demo_model_dir)})
    repeat = judge("smollm2", "Repeat this number and nothing else: {{item.n}}")
    repeat["sampling_params"] = {"max_completions_tokens": 8, "seed": 1}
    repeat["input"] = repeat["input"][1:]
    assert run(srv, repeat, "x", {"n": 0.75})["reward"] == 0.75
    sample = {
        **repeat,
        "input": [{"role": "user", "content": "Repeat this number and nothing else: {{sample.output_text}}"}],
    }
    assert run(srv, sample, "0.25")["reward"] == 0.25
    high = run(srv, sample, "7")
    assert high["reward"] == 1.0 and not any(high["metadata"]["errors"].values())
