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
