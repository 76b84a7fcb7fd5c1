"""Serving: the ChatEngine interface and its embedded twin (transformers + PEFT); vLLM in production.

Importing this package never imports torch: the control plane imports it, the engine loads torch lazily.
"""

from serving.engine import EmbeddedEngine
from serving.errors import AdapterNotFound, EngineError
from serving.protocol import ChatEngine, Generation, ModelRef
from serving.sampling import SamplingParams

__all__ = [
    "AdapterNotFound",
    "ChatEngine",
    "EmbeddedEngine",
    "EngineError",
    "Generation",
    "ModelRef",
    "SamplingParams",
]
