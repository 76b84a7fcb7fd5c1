"""``/v1/fine_tuning/alpha/graders/run`` and ``/validate`` through the official OpenAI SDK
(``client.fine_tuning.alpha.graders``) against a real server: OpenAI's request and answer shapes, checked against its
published schema, and OpenAI's error object, naming the field, for every grader Tunery refuses; python graders, run in
the sandbox."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import RunningServer
from tests.schema import validate
from tunery import sandbox

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.label}}"}
CLOSE = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "evaluation_metric": "fuzzy_match",
}


def run(server: RunningServer, grader: dict[str, Any], sample: str, item: Any = None) -> dict[str, Any]:
    """The SDK's call; the answer as sent, validated against OpenAI's RunGraderResponse."""
    raw = server.client.fine_tuning.alpha.graders.with_raw_response.run(
        grader=grader,  # type: ignore[arg-type]
        model_sample=sample,
        **({"item": item} if item is not None else {}),
    )
    parsed = raw.parse()
    body: dict[str, Any] = raw.http_response.json()
    validate(body, "RunGraderResponse")
    assert parsed.reward == body["reward"]
    return body


def refused(call: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as e:
        call()
    body: dict[str, Any] = e.value.response.json()
    validate(body, "ErrorResponse")
    return body["error"]


def test_run_grades_with_each_operation_and_answers_openais_shape(server: RunningServer) -> None:
    item = {"label": "Paris"}
    for operation, sample, reward in [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "paris", 1.0),
        ("like", "It is Paris.", 1.0),
        ("like", "It is PARIS.", 0.0),
        ("ilike", "It is PARIS.", 1.0),
    ]:
        body = run(server, {**EXACT, "operation": operation}, sample, item)
        assert body["reward"] == reward, (operation, sample)
    meta = body["metadata"]
    assert (meta["name"], meta["type"], meta["token_usage"], meta["sampled_model_name"]) == (
        "exact",
        "string_check",
        None,
        None,
    )
    assert not any(v for v in meta["errors"].values()) and meta["execution_time"] >= 0
    assert body["sub_rewards"] == {} and body["model_grader_token_usage_per_model"] == {}


def test_run_text_similarity_and_multi(server: RunningServer) -> None:
    item = {"label": "hello"}
    assert run(server, CLOSE, "hallo", item)["reward"] == pytest.approx(0.8)
    ref = "police killed the gunman"
    rouge = {**CLOSE, "evaluation_metric": "rouge_l", "reference": ref}
    assert run(server, rouge, "police kill the gunman")["reward"] == pytest.approx(0.75)  # Lin (2004)
    long = "the police killed the gunman near the old bridge at dawn"
    for metric in ("bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5"):
        same = run(server, {**CLOSE, "evaluation_metric": metric, "reference": long}, long)["reward"]
        assert 0.99 <= same <= 1.0 + 1e-9, metric
    multi = {
        "type": "multi",
        "name": "combined",
        "graders": {"exact": {**EXACT, "operation": "eq"}, "close": CLOSE},
        "calculate_output": "0.5 * exact + 0.5 * close ^ 2",
    }
    body = run(server, multi, "hallo", item)
    assert body["reward"] == pytest.approx(0.32)
    assert body["sub_rewards"] == {"exact": 0.0, "close": pytest.approx(0.8)}
    assert body["metadata"]["type"] == "multi" and body["metadata"]["scores"] == body["sub_rewards"]


def test_what_the_sample_or_item_lacks_is_an_error_flag(server: RunningServer) -> None:
    grader = {**EXACT, "operation": "ne"}
    missing = run(server, grader, "x", {"other": "y"})
    assert missing["reward"] == 0.0 and missing["metadata"]["errors"]["invalid_variable_error"]
    json_grader = {**EXACT, "operation": "eq", "input": "{{sample.output_json.answer}}"}
    assert run(server, json_grader, '{"answer": "Paris"}', {"label": "Paris"})["reward"] == 1.0
    not_json = run(server, json_grader, "Paris", {"label": "Paris"})
    assert not_json["reward"] == 0.0 and not_json["metadata"]["errors"]["sample_parse_error"]
    formula = {"type": "multi", "name": "m", "graders": {"e": {**EXACT, "operation": "eq"}}, "calculate_output": "1/e"}
    no_value = run(server, formula, "x", {"label": "y"})
    assert no_value["reward"] == 0.0 and no_value["metadata"]["errors"]["other_error"]


@pytest.mark.parametrize(
    ("grader", "param", "code", "words"),
    [
        ({**EXACT, "operation": "contains"}, "grader.operation", "invalid_grader", "'eq', 'ne', 'like' or 'ilike'"),
        ({**EXACT, "operation": "eq", "input": "{{sample.text}}"}, "grader.input", "invalid_template", "output_text"),
        ({"type": "regex", "name": "r"}, "grader.type", "invalid_grader", "is not one of"),
        (
            {"type": "multi", "name": "m", "graders": {"e": CLOSE}, "calculate_output": "__import__('os')"},
            "grader.calculate_output",
            "invalid_formula",
            "'__import__' is not a function it may call",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"e": CLOSE}, "calculate_output": "e.__class__"},
            "grader.calculate_output",
            "invalid_formula",
            "attribute access",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"e": CLOSE}, "calculate_output": "10 ** 10 ** 10 * e"},
            "grader.calculate_output",
            "invalid_formula",
            "has no value",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"e": {**CLOSE, "reference": "{{x}}"}}, "calculate_output": "e"},
            "grader.graders.e.reference",
            "invalid_template",
            "a template is",
        ),
    ],
)
def test_a_bad_grader_is_a_400_naming_the_field(
    server: RunningServer, grader: dict[str, Any], param: str, code: str, words: str
) -> None:
    graders = server.client.fine_tuning.alpha.graders
    for call in (
        lambda: graders.validate(grader=grader),  # type: ignore[arg-type]
        lambda: graders.run(grader=grader, model_sample="x"),  # type: ignore[arg-type]
    ):
        error = refused(call)
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
        assert words in error["message"]


def test_validate_answers_the_grader_and_run_refuses_what_tunery_does_not_run(server: RunningServer) -> None:
    graders = server.client.fine_tuning.alpha.graders
    python = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": "m",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Rate {{sample.output_text}}"}]}],
        "range": [0, 1],
    }
    cosine = {**CLOSE, "evaluation_metric": "cosine"}
    one = {"type": "multi", "name": "e", "graders": {**EXACT, "operation": "eq"}, "calculate_output": "exact"}
    named = {"type": "multi", "name": "m", "graders": {"e": {**EXACT, "operation": "eq"}}, "calculate_output": "e"}
    for grader in (python, judge, cosine, one, named, {**EXACT, "operation": "eq"}):
        raw = graders.with_raw_response.validate(grader=grader)  # type: ignore[arg-type]
        body = raw.http_response.json()
        if grader is not named:  # OpenAI's schema has one sub-grader; its guide (and Tunery) also name several
            validate(body, "ValidateGraderResponse")
        assert body["grader"] == grader
        assert raw.parse().grader is not None
    for grader, param, code, words in [
        (judge, "grader.model", "model_not_found", "does not exist"),  # a judge this server serves: test_graders_judge
        (cosine, "grader.evaluation_metric", "grader_not_supported", "embedding model"),
    ]:
        error = refused(lambda g=grader: graders.run(grader=g, model_sample="x"))  # type: ignore[misc]
        assert (error["param"], error["code"]) == (param, code)
        assert words in error["message"]


@pytest.mark.skipif(sandbox.unavailable() is not None, reason=f"no sandbox: {sandbox.unavailable()}")
def test_a_python_grader_runs_in_the_sandbox(server: RunningServer) -> None:
    source = (
        "from rapidfuzz import fuzz, utils\n\n"
        "def grade(sample, item) -> float:\n"
        "    if sample['output_json'] is not None:\n"
        "        return float(sample['output_json']['answer'] == item['label'])\n"
        "    return fuzz.WRatio(sample['output_text'], item['label'], processor=utils.default_process) / 100.0\n"
    )
    python = {"type": "python", "name": "py", "source": source}
    assert run(server, python, "Paris", {"label": "paris"})["reward"] == 1.0
    assert run(server, python, '{"answer": "Paris"}', {"label": "Paris"})["reward"] == 1.0
    body = run(server, python, '{"answer": "Lyon"}', {"label": "Paris"})
    assert body["reward"] == 0.0 and not any(body["metadata"]["errors"].values())
    assert (body["metadata"]["type"], body["metadata"]["name"]) == ("python", "py")
    failing = run(server, python, '{"other": 1}', {"label": "Paris"})  # grade raises KeyError
    errors = failing["metadata"]["errors"]
    assert failing["reward"] == 0.0 and errors["python_grader_runtime_error"]
    assert "KeyError: 'answer'" in errors["python_grader_runtime_error_details"]
    secret = {
        "type": "python",
        "name": "s",
        "source": "def grade(sample, item):\n    return len(open('/etc/hostname').read())\n",
    }
    denied = run(server, secret, "x")["metadata"]["errors"]
    assert denied["python_grader_runtime_error"] and "PermissionError" in denied["python_grader_runtime_error_details"]
    multi = {
        "type": "multi",
        "name": "m",
        "graders": {"py": python, "exact": {**EXACT, "operation": "eq"}},
        "calculate_output": "0.5 * py + 0.5 * exact",
    }
    body = run(server, multi, "Paris", {"label": "Paris"})
    assert body["reward"] == 1.0 and body["sub_rewards"] == {"py": 1.0, "exact": 1.0}


def test_a_python_graders_source_is_checked_by_validate_and_run(server: RunningServer) -> None:
    graders = server.client.fine_tuning.alpha.graders
    for source, words in [("def grade(sample, item:\n    return 1\n", "does not parse"), ("x = 1\n", "defines no")]:
        grader = {"type": "python", "name": "py", "source": source}
        for call in (
            lambda: graders.validate(grader=grader),  # type: ignore[arg-type]  # noqa: B023
            lambda: graders.run(grader=grader, model_sample="x"),  # type: ignore[arg-type]  # noqa: B023
        ):
            error = refused(call)
            assert (error["param"], error["code"]) == ("grader.source", "invalid_grader")
            assert words in error["message"]


def test_the_request_itself_is_checked(server: RunningServer) -> None:
    http = server.http
    missing = http.post("/v1/fine_tuning/alpha/graders/run", json={"grader": {**EXACT, "operation": "eq"}})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model_sample"
    not_object = http.post("/v1/fine_tuning/alpha/graders/run", json={"grader": [1], "model_sample": "x"})
    assert not_object.status_code == 400 and not_object.json()["error"]["param"] == "grader"
    bad_item = http.post(
        "/v1/fine_tuning/alpha/graders/run",
        json={"grader": EXACT, "model_sample": "x", "item": ["not", "an", "object"]},
    )
    assert bad_item.status_code == 400 and bad_item.json()["error"]["param"] == "item"


def test_graders_need_a_key_once_keys_are_configured(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(api_keys="sk-tunery-graders-0123456789abcdef")
    grader = {**EXACT, "operation": "eq"}
    with pytest.raises(openai.AuthenticationError):
        srv.client.fine_tuning.alpha.graders.validate(grader=grader)  # type: ignore[arg-type]
    keyed = srv.client.with_options(api_key="sk-tunery-graders-0123456789abcdef")
    assert keyed.fine_tuning.alpha.graders.run(grader=grader, model_sample="a", item={"label": "a"}).reward == 1.0
