"""Errors of the serving engines that a client caused (the API answers them with HTTP 400 / 404)."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine refuses: bad messages, a prompt too long for the model, bad sampling values.

    ``message`` is written for the client; ``param`` and ``code`` fill the OpenAI error object
    (``{"error": {"message", "type", "param", "code"}}``).
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class AdapterNotFound(EngineError):
    """The fine-tuned model's adapter is not in the object store (deleted, or never written)."""

    def __init__(self, message: str, param: str | None = "model", code: str | None = "model_not_found"):
        super().__init__(message, param, code)


class ServingUnavailable(Exception):
    """The model cannot be served right now (its vLLM is down, starting or overloaded; no engine in this role).

    The API answers 503 (``type: server_error``) with ``Retry-After`` when ``retry_after`` is set: a client that
    retries later will be served. ``retry_after=None`` means retrying will not help until the configuration changes.
    """

    def __init__(
        self, message: str, retry_after: int | None = None, code: str = "model_unavailable", status: int = 503
    ):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.code = code
        self.status = status


class ServingOverloaded(ServingUnavailable):
    """Too many requests are waiting for a generation: 429 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, retry_after, code="rate_limit_exceeded", status=429)
