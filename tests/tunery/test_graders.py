"""tunery/graders/: OpenAI's grader objects, templates, each grader and metric against an independent computation or a
published example, and the formula of a multi grader, including what it must refuse."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import pytest

from tunery import graders as g
from tunery.graders import FormulaError, GraderError, GraderNotRunnable, TemplateError, parse_formula, parse_grader


def check(input: str, reference: str, operation: str) -> dict[str, Any]:
    return {"type": "string_check", "name": "c", "input": input, "reference": reference, "operation": operation}


def similar(input: str, reference: str, metric: str) -> dict[str, Any]:
    return {"type": "text_similarity", "name": "s", "input": input, "reference": reference, "evaluation_metric": metric}


def reward(grader: dict[str, Any], sample: str, item: Any = None) -> float:
    return g.run_grader(parse_grader(grader), sample, item).reward


# ---- string_check ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("operation", "sample", "label", "expected"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris", "paris", 0.0),  # case counts
        ("eq", "Paris ", "Paris", 0.0),  # so does a space
        ("ne", "Paris", "paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0),  # contains, case-sensitive
        ("like", "The capital is PARIS.", "Paris", 0.0),
        ("like", "Paris", "The capital is Paris.", 0.0),  # the reference is looked for in the input, not the reverse
        ("ilike", "The capital is PARIS.", "paris", 1.0),
        ("ilike", "The capital is Lyon.", "paris", 0.0),
        ("like", "anything", "", 1.0),  # the empty string is in every string
    ],
)
def test_string_check(operation: str, sample: str, label: str, expected: float) -> None:
    grader = check("{{sample.output_text}}", "{{item.label}}", operation)
    assert reward(grader, sample, {"label": label}) == expected


def test_string_check_answers_openais_metadata() -> None:
    result = g.run_grader(parse_grader(check("{{ sample.output_text }}", "yes", "eq")), "yes")
    assert result.reward == 1.0 and result.sub_rewards == {}
    meta = result.metadata
    assert (meta.name, meta.type, meta.token_usage, meta.sampled_model_name) == ("c", "string_check", None, None)
    assert not meta.errors.any() and meta.execution_time >= 0
    assert set(g.ERROR_FLAGS) <= set(meta.errors.model_dump())


# ---- templates ------------------------------------------------------------------------------------------------------
def test_templates_fill_nested_paths_lists_and_json() -> None:
    item = {"answer": {"city": "Paris", "aliases": ["Lutetia", "City of Light"]}, "n": 3, "flag": True}
    sample = '{"city": "Paris", "scores": [0.5, {"k": "v"}]}'
    cases = {
        "{{item.answer.city}}": "Paris",
        "{{  item.answer.aliases.1  }}": "City of Light",  # spaces inside the braces, a number indexes a list
        "{{item.n}}/{{item.flag}}": "3/true",  # other values as their JSON
        "{{item.answer.aliases}}": '["Lutetia", "City of Light"]',
        "{{sample.output_json.city}}": "Paris",
        "{{sample.output_json.scores.1.k}}": "v",
        "<{{sample.output_text}}>": f"<{sample}>",
        "no template": "no template",
        "{ {item.n} }": "{ {item.n} }",  # not a template: left as it is
    }
    for template, expected in cases.items():
        assert reward(check(template, expected, "eq"), sample, item) == 1.0, template


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{sample.output}}", "the sample has output_text, output_json"),
        ("{{sample}}", "the sample has output_text, output_json"),
        ("{{sample.output_text.x}}", "output_text is a string"),
        ("{{items.label}}", "a template is"),
        ("{{ }}", "a template is"),
        ("{{item.label | upper}}", "a template is"),
        ("{{item..label}}", "a template is"),
    ],
)
def test_a_reference_tunery_cannot_fill_is_refused_before_running(template: str, words: str) -> None:
    with pytest.raises(TemplateError) as e:
        parse_grader(check("ok", template, "eq"))
    assert e.value.param == "grader.reference" and words in e.value.message


def test_what_the_sample_or_item_lacks_is_an_error_flag_and_no_reward() -> None:
    missing = g.run_grader(parse_grader(check("{{item.label}}", "x", "ne")), "x", {"other": 1})
    assert missing.reward == 0.0 and missing.metadata.errors.invalid_variable_error  # ne would have given 1
    assert missing.problems == ["grader: item has no 'label'"]
    not_json = g.run_grader(parse_grader(check("{{sample.output_json.a}}", "x", "ne")), "not json", {})
    assert not_json.reward == 0.0 and not_json.metadata.errors.sample_parse_error
    deep = g.run_grader(parse_grader(check("{{sample.output_json}}", "x", "ne")), "[" * 100_000, {})
    assert deep.metadata.errors.sample_parse_error
    no_key = g.run_grader(parse_grader(check("{{sample.output_json.a.b}}", "x", "ne")), '{"a": 1}', {})
    assert no_key.metadata.errors.invalid_variable_error and no_key.problems == [
        "grader: sample.output_json.a has no 'b'"
    ]
    out_of_range = g.run_grader(parse_grader(check("{{item.xs.2}}", "x", "ne")), "x", {"xs": [1, 2]})
    assert out_of_range.metadata.errors.invalid_variable_error


# ---- the grader objects ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("grader", "param", "words"),
    [
        ("not an object", "grader", "a grader is an object"),
        ({"name": "x"}, "grader.type", "Missing required parameter"),
        ({"type": "regex", "name": "x"}, "grader.type", "is not one of string_check"),
        ({"type": ["multi"], "name": "x"}, "grader.type", "is not one of"),
        ({"type": "label_model", "name": "x"}, "grader.type", "is not one of"),  # only inside a multi grader
        ({"type": "string_check", "name": "x", "input": "a", "reference": "b"}, "grader.operation", "Missing"),
        (check("a", "b", "contains"), "grader.operation", "'eq', 'ne', 'like' or 'ilike'"),
        (similar("a", "b", "bleurt"), "grader.evaluation_metric", "Input should be"),
        ({"type": "python", "name": "p", "source": "def grade(:"}, "grader.source", "does not parse"),
        (
            {"type": "python", "name": "p", "source": "return 1\ndef grade(s, i): return 1"},
            "grader.source",
            "'return' outside function (grader.py, line 1)",
        ),
        ({"type": "python", "name": "p", "source": "x = 1"}, "grader.source", "defines no function `grade"),
        (
            {"type": "score_model", "name": "j", "model": "m", "input": [{"role": "judge", "content": "x"}]},
            "grader.input[0].role",
            "Input should be",
        ),
        (
            {
                "type": "score_model",
                "name": "j",
                "model": "m",
                "input": [
                    {"role": "user", "content": {"type": "input_audio", "input_audio": {"data": "", "format": "ogg"}}}
                ],
            },
            "grader.input[0].content.input_audio.format",  # the content part it nearly is, not "should be a string"
            "Input should be 'mp3' or 'wav'",
        ),
        (
            {
                "type": "score_model",
                "name": "j",
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_text"}]}],
            },
            "grader.input[0].content[0].text",
            "Missing required parameter",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": check("x", "y", "eq")}},
            "grader.calculate_output",
            "Missing required parameter",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": check("x", "y", "is")}, "calculate_output": "a"},
            "grader.graders.a.operation",
            "Invalid value for 'grader.graders.a.operation'",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": {"type": "multi"}}, "calculate_output": "a"},
            "grader.graders.a.type",
            "is not one of",  # no multi inside a multi
        ),
        ({"type": "multi", "name": "m", "graders": [], "calculate_output": "1"}, "grader.graders", "named sub-graders"),
        (
            {"type": "multi", "name": "m", "graders": {"a": check("{{x}}", "y", "eq")}, "calculate_output": "a"},
            "grader.graders.a.input",
            "a template is",
        ),
    ],
)
def test_a_malformed_grader_is_refused_naming_the_field(grader: Any, param: str, words: str) -> None:
    with pytest.raises(GraderError) as e:
        parse_grader(grader)
    assert e.value.param == param
    assert words in e.value.message


def test_image_judges_and_cosine_are_well_formed_but_not_run() -> None:
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": "gpt-4o-mini",
        "input": [
            {"role": "system", "content": "Score 0 to 1."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Answer: {{sample.output_text}} vs {{item.label}}"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                ],
            },
        ],
        "range": [0, 1],
        "sampling_params": {"temperature": 0.2, "seed": 1},
    }
    labeller = {
        "type": "label_model",
        "name": "labels",
        "model": "m",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        "labels": ["good", "bad"],
        "passing_labels": ["good"],
    }
    cases = [  # python: tests/tunery/test_python_grader.py; score_model with text: tests/api/test_graders_judge.py
        (judge, "grader.input[1].content[1]", "read text only"),
        (similar("a", "b", "cosine"), "grader.evaluation_metric", "embedding model"),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {"l": {**labeller, "input": judge["input"]}},
                "calculate_output": "l",
            },
            "grader.graders.l.input[1].content[1]",
            "read text only",
        ),
    ]
    for grader, param, words in cases:
        parsed = parse_grader(grader)  # well-formed
        with pytest.raises(GraderNotRunnable) as e:
            g.run_grader(parsed, "a", {"label": "a"})
        assert (e.value.param, e.value.code) == (param, "grader_not_supported")
        assert words in e.value.message
    bad_template = {**judge, "input": [{"role": "user", "content": [{"type": "input_text", "text": "{{x.y}}"}]}]}
    with pytest.raises(TemplateError) as t:
        parse_grader(bad_template)
    assert t.value.param == "grader.input[0].content"


# ---- text_similarity: each metric against an independent computation or a published example ------------------------
def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _bleu(hyp: str, ref: str) -> float:
    """Papineni et al. (2002): the geometric mean of clipped 1..4-gram precisions times the brevity penalty."""
    h, r = hyp.split(), ref.split()
    logs = []
    for n in range(1, 5):
        matches = sum((_ngrams(h, n) & _ngrams(r, n)).values())
        logs.append(math.log(matches / max(len(h) - n + 1, 1)))
    bp = 1.0 if len(h) > len(r) else math.exp(1 - len(r) / len(h))
    return bp * math.exp(sum(logs) / 4)


def _gleu(hyp: str, ref: str) -> float:
    """Wu et al. (2016): min(precision, recall) of all 1..4-grams together."""
    h, r = hyp.split(), ref.split()
    matches = sum(sum((_ngrams(h, n) & _ngrams(r, n)).values()) for n in range(1, 5))
    return min(
        matches / sum(sum(_ngrams(h, n).values()) for n in range(1, 5)),
        matches / sum(sum(_ngrams(r, n).values()) for n in range(1, 5)),
    )


def _rouge_n(hyp: str, ref: str, n: int) -> float:
    h, r = _ngrams(hyp.split(), n), _ngrams(ref.split(), n)
    overlap = sum((h & r).values())
    if not overlap:
        return 0.0
    p, rc = overlap / sum(h.values()), overlap / sum(r.values())
    return 2 * p * rc / (p + rc)


HYP = "the quick brown fox jumps over the lazy dog near the river bank today"
REF = "the quick brown fox jumped over the lazy dog near the river bank today"


def test_bleu_is_papinenis() -> None:
    expected = _bleu(HYP, REF)
    assert 0.5 < expected < 0.9
    assert reward(similar(HYP, REF, "bleu"), "") == pytest.approx(expected, abs=1e-9)
    shorter = "the quick brown fox jumps over the lazy dog near the river"  # the brevity penalty
    assert reward(similar(shorter, REF, "bleu"), "") == pytest.approx(_bleu(shorter, REF), abs=1e-9)
    assert reward(similar(REF, REF, "bleu"), "") == pytest.approx(1.0)
    assert reward(similar("", REF, "bleu"), "") == 0.0


def test_gleu_is_wus() -> None:
    assert reward(similar(HYP, REF, "gleu"), "") == pytest.approx(_gleu(HYP, REF), abs=1e-9)
    short = "the quick brown fox"  # recall is the minimum here
    assert reward(similar(short, REF, "gleu"), "") == pytest.approx(_gleu(short, REF), abs=1e-9)
    assert reward(similar(REF, REF, "gleu"), "") == pytest.approx(1.0)


def test_rouge_is_lins() -> None:
    """Lin (2004), section 3.1: against "police killed the gunman", "police kill the gunman" has ROUGE-L 3/4 and
    "the gunman kill police" has 1/2 (the LCS counts in-sequence words only)."""
    ref = "police killed the gunman"
    assert reward(similar("police kill the gunman", ref, "rouge_l"), "") == pytest.approx(0.75)
    assert reward(similar("the gunman kill police", ref, "rouge_l"), "") == pytest.approx(0.5)
    assert reward(similar("police kill the gunman", ref, "rouge_1"), "") == pytest.approx(0.75)
    assert reward(similar("police kill the gunman", ref, "rouge_2"), "") == pytest.approx(1 / 3)
    for n in range(1, 6):
        metric = f"rouge_{n}"
        assert reward(similar(HYP, REF, metric), "") == pytest.approx(_rouge_n(HYP, REF, n), abs=1e-9), metric
    assert reward(similar("a b c d", "a b c d", "rouge_5"), "") == 0.0  # no 5-grams in four words


def test_meteor_matches_exact_words_and_stems_but_no_synonyms() -> None:
    """METEOR (Banerjee and Lavie, 2005) with alpha 0.9, beta 3, gamma 0.5: Fmean = PR / (aP + (1-a)R), times
    1 - gamma (chunks / matches) ** beta."""
    ref = "the cat is on the mat"
    p = r = 5 / 6  # "the cat" and "on the mat": 5 matches in 2 chunks
    fmean = p * r / (0.9 * p + 0.1 * r)
    assert reward(similar("the cat sat on the mat", ref, "meteor"), "") == pytest.approx(fmean * (1 - 0.5 * 0.4**3))
    assert reward(similar(ref, ref, "meteor"), "") == pytest.approx(1 - 0.5 * (1 / 6) ** 3)
    # "cats" meets "cat" through the Porter stem; "sofa" never meets "couch": WordNet's synonyms are not shipped.
    stems = reward(similar("cats sleep", "cat sleep", "meteor"), "")
    synonyms = reward(similar("sofa sleep", "couch sleep", "meteor"), "")
    assert stems == reward(similar("cat sleep", "cat sleep", "meteor"), "") and synonyms < stems
    assert reward(similar("", ref, "meteor"), "") == 0.0


def test_fuzzy_match_is_the_normalised_indel_similarity() -> None:
    # hello -> hallo: one deletion and one insertion, over 10 characters.
    assert reward(similar("hello", "hallo", "fuzzy_match"), "") == pytest.approx(0.8)
    assert reward(similar("{{sample.output_text}}", "{{item.x}}", "fuzzy_match"), "abc", {"x": "abc"}) == 1.0
    assert reward(similar("abc", "xyz", "fuzzy_match"), "") == 0.0
    assert reward(similar("", "", "fuzzy_match"), "") == 1.0


def test_texts_too_long_for_a_metric_are_a_flag_not_minutes_of_cpu() -> None:
    long = "word " * 5_000
    started = time.perf_counter()
    for metric in ("rouge_l", "meteor"):
        result = g.run_grader(parse_grader(similar("{{sample.output_text}}", "word", metric)), long)
        assert result.reward == 0.0 and result.metadata.errors.truncated_observation_error
    huge = g.run_grader(parse_grader(similar("{{sample.output_text}}", "x", "bleu")), "x" * (g.MAX_TEXT_CHARS + 1))
    assert huge.metadata.errors.truncated_observation_error
    assert time.perf_counter() - started < 5


# ---- multi: sub-graders and the formula ---------------------------------------------------------------------------
def multi(formula: str, graders: dict[str, Any] | None = None) -> dict[str, Any]:
    graders = graders or {
        "exact": check("{{sample.output_text}}", "{{item.label}}", "eq"),
        "close": similar("{{sample.output_text}}", "{{item.label}}", "fuzzy_match"),
    }
    return {"type": "multi", "name": "combined", "graders": graders, "calculate_output": formula}


def test_multi_combines_named_sub_graders_with_its_formula() -> None:
    result = g.run_grader(parse_grader(multi("0.5 * exact + 0.5 * close")), "hallo", {"label": "hello"})
    assert result.sub_rewards == {"exact": 0.0, "close": pytest.approx(0.8)}
    assert result.reward == pytest.approx(0.4)
    assert result.metadata.type == "multi" and result.metadata.scores == result.sub_rewards
    cases = {
        "exact + close": 0.8,
        "max(exact, close)": 0.8,
        "min(exact, close, 1)": 0.0,
        "close ^ 2": 0.64,  # OpenAI's guide writes a power as ^
        "0.5 * exact + 0.5 * close ^ 2": 0.32,  # and it binds as a power, not as Python's ^ (0.16)
        "-close ^ 2 + 1": 0.36,
        "close ** 2": 0.64,
        "-close + 1": 0.2,
        "abs(exact - close)": 0.8,
        "floor(close * 10) / 10 + ceil(close)": 1.8,
        "sqrt(close * 5)": 2.0,
        "log(exp(close))": 0.8,
        "(exact + 1) / (close + 0.2)": 1.0,
    }
    for formula, expected in cases.items():
        assert reward(multi(formula), "hallo", {"label": "hello"}) == pytest.approx(expected), formula


def test_multi_with_one_grader_names_it_by_its_name() -> None:
    one = {
        "type": "multi",
        "name": "m",
        "graders": check("{{sample.output_text}}", "yes", "eq"),
        "calculate_output": "c",
    }
    assert reward(one, "yes") == 1.0


@pytest.mark.parametrize(
    ("formula", "words"),
    [
        ("__import__('os')", "'__import__' is not a function it may call"),
        ("__import__('os').system('true')", "is not a function it may call"),
        ("exact.__class__", "attribute access (exact.__class__) is not allowed"),
        ("().__class__.__bases__[0]", "Subscript is not allowed"),
        ("().__class__", "attribute access"),
        ("open('x')", "'open' is not a function it may call"),
        ("round(exact)", "'round' is not a function it may call"),
        ("math.floor(exact)", "'math.floor' is not a function it may call"),
        ("unknown + 1", "'unknown' is not the name of a sub-grader (they are: close, exact)"),
        ("10 ** 10 ** 10", "has no value (a value is beyond ±1e+15)"),
        ("9 ** 9 ** 9 ** 9", "has no value"),
        ("exact * 1e300", "the number 1e+300 is beyond"),
        ("1 / 0 + exact", "1 / 0 has no value (float division by zero)"),
        ("log(0)", "has no value (math domain error)"),
        ("exact if close else 1", "IfExp is not allowed"),
        ("[exact]", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("exact and close", "BoolOp is not allowed"),
        ("exact < close", "Compare is not allowed"),
        ("exact % 2", "the operator Mod is not allowed"),
        ("exact // 2", "the operator FloorDiv is not allowed"),
        ("~exact", "the operator Invert is not allowed"),
        ("'1' + exact", "'1' is not a number"),
        ("True + exact", "True is not a number"),
        ("max()", "max() takes at least 1 argument, not 0"),
        ("sqrt(exact, close)", "sqrt() takes 1 argument, not 2"),
        ("max(*[exact])", "takes plain arguments"),
        ("max(exact, key=close)", "takes plain arguments"),
        ("0.5 * exact + 0.5 * close)", "does not parse"),  # OpenAI's own example, with its stray parenthesis
        ("", "does not parse"),
        ("exact; close", "does not parse"),
        ("(" * 250 + "exact" + ")" * 250, "does not parse"),  # Python's parser stops at 200 nested parentheses
        ("-" * 40 + "exact", "nested deeper than 32 levels"),
        ("exact + " * 200 + "1", "longer than 1024 characters"),
    ],
)
def test_formulas_are_refused_naming_the_problem(formula: str, words: str) -> None:
    with pytest.raises(FormulaError) as e:
        parse_grader(multi(formula))
    assert e.value.param == "grader.calculate_output" and e.value.code == "invalid_formula"
    assert words in e.value.message, e.value.message


def test_a_formula_without_a_value_for_these_rewards_is_an_error_flag() -> None:
    result = g.run_grader(parse_grader(multi("1 / exact")), "no", {"label": "yes"})  # exact is 0
    assert result.reward == 0.0 and result.metadata.errors.other_error
    assert result.problems == ["grader.calculate_output has no value: float division by zero"]
    flagged = g.run_grader(parse_grader(multi("1 - exact")), "no", {})  # item.label is missing: no reward at all
    assert flagged.reward == 0.0 and flagged.metadata.errors.invalid_variable_error


def test_a_formula_is_evaluated_on_floats_and_quickly() -> None:
    started = time.perf_counter()
    formula = parse_formula("a ** a ** a ** a", {"a"})
    with pytest.raises(OverflowError):
        formula.evaluate({"a": 9.0})  # 9 ** 387420489 as an int would take minutes; as a float it overflows
    assert parse_formula("a ** 0.5", {"a"}).evaluate({"a": 4}) == 2.0
    with pytest.raises(ValueError):
        parse_formula("a ** 0.5", {"a"}).evaluate({"a": -4})  # no complex numbers
    assert time.perf_counter() - started < 1
