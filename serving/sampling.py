"""Sampling options: OpenAI's request fields as one typed value, and the one place their rules live. No torch here.

The API builds a ``SamplingParams`` from each chat or legacy completion request (``SamplingParams.from_request``),
which refuses what OpenAI refuses, naming the parameter, and hands it to the serving backend with the request. The
embedded engine samples from it (serving/engine.py, serving/penalties.py); the vLLM backend forwards the client's
fields, which vLLM implements, translating only what vLLM would refuse (``top_p=0``, serving/vllm.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.errors import EngineError

# Below this temperature sampling is greedy (dividing logits by ~0 would overflow).
GREEDY_BELOW = 1e-5
# OpenAI's bounds.
MAX_STOP = 4
PENALTY_RANGE = (-2.0, 2.0)
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
LOGIT_BIAS_RANGE = (-100.0, 100.0)
MAX_LOGIT_BIAS = 300


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _check_range(param: str, value: Any, low: float, high: float) -> None:
    """OpenAI's answer to a number out of its range (``code``: ``decimal_below_min_value`` / ``..._above_max_...``)."""
    if not _number(value) or not math.isfinite(value):
        raise EngineError(f"Invalid '{param}': expected a number, but got {value!r} instead.", param, "invalid_type")
    if value < low:
        raise EngineError(
            f"Invalid '{param}': decimal below minimum value. Expected a value >= {_fmt(low)}, but got "
            f"{_fmt(value)} instead.",
            param,
            "decimal_below_min_value",
        )
    if value > high:
        raise EngineError(
            f"Invalid '{param}': decimal above maximum value. Expected a value <= {_fmt(high)}, but got "
            f"{_fmt(value)} instead.",
            param,
            "decimal_above_max_value",
        )


def _bad_key(key: Any) -> EngineError:
    return EngineError(
        f"Invalid key in 'logit_bias': {key!r}. Keys must be token ids (non-negative integers, as strings).",
        "logit_bias",
        "invalid_value",
    )


def _token_id(key: Any) -> int:
    """A logit_bias key of a request: a token id, written as a decimal string (JSON object keys are strings)."""
    if isinstance(key, str) and key.isascii() and key.isdigit():
        return int(key)
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key
    raise _bad_key(key)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion. The defaults are OpenAI's."""

    max_tokens: int | None = None  # None: the engine's default cap, within the model's context
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # 0: the smallest nucleus, only the most likely token: greedy
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    frequency_penalty: float = 0.0  # minus count * this from a token's logit (count: times generated so far)
    presence_penalty: float = 0.0  # minus this from the logit of every token generated so far
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_p == 0

    @property
    def adjusts_logits(self) -> bool:
        """Whether penalties or biases change the logits before sampling (serving/penalties.py)."""
        return bool(self.frequency_penalty or self.presence_penalty or self.logit_bias)

    def check(self, vocab_size: int | None = None) -> None:
        """Refuse what OpenAI refuses (EngineError naming the parameter); with ``vocab_size``, also logit_bias
        token ids the model does not have."""
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1
        ):
            raise EngineError(
                f"Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got "
                f"{self.max_tokens!r} instead.",
                "max_tokens",
                "integer_below_min_value",
            )
        _check_range("temperature", self.temperature, *TEMPERATURE_RANGE)
        _check_range("top_p", self.top_p, *TOP_P_RANGE)
        _check_range("frequency_penalty", self.frequency_penalty, *PENALTY_RANGE)
        _check_range("presence_penalty", self.presence_penalty, *PENALTY_RANGE)
        if not isinstance(self.stop, list | tuple) or not all(isinstance(s, str) for s in self.stop):
            raise EngineError("Invalid 'stop': expected a string or a list of strings.", "stop")
        if len(self.stop) > MAX_STOP:
            raise EngineError(
                f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, but got an "
                f"array with length {len(self.stop)} instead.",
                "stop",
                "array_above_max_length",
            )
        if not isinstance(self.logit_bias, dict):
            raise EngineError("Invalid 'logit_bias': expected an object of token ids to biases.", "logit_bias")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise EngineError(
                f"Invalid 'logit_bias': too many properties. Expected an object with at most {MAX_LOGIT_BIAS} "
                f"properties, but got an object with {len(self.logit_bias)} properties instead.",
                "logit_bias",
                "object_above_max_properties",
            )
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise _bad_key(token)
            low, high = LOGIT_BIAS_RANGE
            if not _number(bias) or not math.isfinite(bias) or not low <= bias <= high:
                raise EngineError(
                    f"Invalid value for 'logit_bias': the bias of token {token} must be a number between "
                    f"{_fmt(low)} and {_fmt(high)}, but got {bias!r} instead.",
                    "logit_bias",
                    "invalid_value",
                )
            if vocab_size is not None and token >= vocab_size:
                raise EngineError(
                    f"Invalid key in 'logit_bias': token id {token} is outside the model's vocabulary "
                    f"(ids 0 to {vocab_size - 1}).",
                    "logit_bias",
                    "invalid_value",
                )

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> SamplingParams:
        """The sampling options of an OpenAI chat or legacy completion request (its JSON as the API parsed it),
        checked. A field sent as ``null`` takes its default, as OpenAI's do."""
        limit_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        stop = body.get("stop")
        bias = body.get("logit_bias")
        if bias is not None and not isinstance(bias, Mapping):
            raise EngineError("Invalid 'logit_bias': expected an object of token ids to biases.", "logit_bias")

        def number(name: str, default: float) -> Any:
            value = body.get(name)
            return default if value is None else value

        params = cls(
            max_tokens=body.get(limit_param),
            temperature=number("temperature", 1.0),
            top_p=number("top_p", 1.0),
            stop=[stop] if isinstance(stop, str) else list(stop or []),
            seed=body.get("seed"),
            frequency_penalty=number("frequency_penalty", 0.0),
            presence_penalty=number("presence_penalty", 0.0),
            logit_bias={_token_id(k): v for k, v in (bias or {}).items()},
        )
        try:
            params.check()
        except EngineError as e:
            if e.param == "max_tokens" and limit_param != "max_tokens":
                raise EngineError(e.message.replace("'max_tokens'", f"'{limit_param}'"), limit_param, e.code) from None
            raise
        return params


def pick_token(logits: Any, params: SamplingParams, rng: Any) -> int:
    """The next token: argmax, or a sample (temperature, then nucleus top_p) drawn with the request's RNG.

    Done in numpy on the CPU: these vector ops are too small for torch's thread pool, which on a busy CPU
    costs milliseconds per call, and a numpy Generator gives the same sample for the same seed everywhere.
    """
    import numpy as np

    z = logits.detach().float().cpu().numpy().astype(np.float64)
    if rng is None:
        return int(np.argmax(z))  # first maximum, like torch.argmax
    z = (z - z.max()) / params.temperature
    weights = np.exp(z)
    order = None
    if params.top_p < 1.0:
        # The nucleus: the most probable tokens until their mass reaches top_p. Look among the top k first
        # (peaked distributions need few), and sort everything only when it is not there.
        mass = params.top_p * weights.sum()
        k = 64
        while True:
            if k >= len(weights):
                order = np.argsort(-weights, kind="stable")
            else:
                order = np.argpartition(-weights, k)[:k]
                order = order[np.argsort(-weights[order], kind="stable")]
            cumulative = np.cumsum(weights[order])
            if cumulative[-1] >= mass or k >= len(weights):
                break
            k *= 8
        order = order[(cumulative - weights[order]) < mass]  # keeps at least the top one
        weights = weights[order]
    cumulative = np.cumsum(weights)
    j = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(weights) - 1)
    return int(order[j]) if order is not None else j
