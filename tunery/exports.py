"""A merged-model export (docs/exports.md): what a job of kind ``export`` makes of an ``ft:`` model or checkpoint
model, and the name of its one result. The API validates a request against these types, the scheduler embeds them in
the run's JobSpec, the trainer (trainer/export_task.py) obeys them, and the reporting service names the result file
with :func:`result_filename`: one home for every layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from tunery.archive import safe_name

ExportFormat = Literal["safetensors", "gguf"]
ExportDtype = Literal["float32", "float16", "bfloat16"]
GgufType = Literal["f32", "f16", "q8_0"]

EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
EXPORT_DTYPES: tuple[str, ...] = get_args(ExportDtype)
GGUF_TYPES: tuple[str, ...] = get_args(GgufType)
DEFAULT_GGUF_TYPE: GgufType = "f16"

# The one architecture the GGUF writer (trainer/export.py) lays out as llama.cpp expects.
LLAMA_ARCHITECTURE = "LlamaForCausalLM"


def gguf_refusal(config: Mapping[str, Any]) -> str | None:
    """Why a model of this ``config.json`` cannot be written as a GGUF (None when it can): the one rule, asked by the
    API before it queues an export (where it can read the base model's config) and by the trainer's writer, which
    would otherwise write a file that loads and then computes something else."""
    architectures = config.get("architectures") or []
    if architectures != [LLAMA_ARCHITECTURE] or config.get("model_type") != "llama":
        found = architectures or config.get("model_type")
        return f"GGUF export supports {LLAMA_ARCHITECTURE} only; the model is {found}"
    # transformers 5 writes rope_parameters; older configs have rope_theta / rope_scaling at the top level.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        return f"GGUF export does not support rope scaling {rope_type!r} yet"
    if config.get("attention_bias") or config.get("mlp_bias"):
        return "GGUF export does not support Llama models with biases"
    return None


# The suffix of the result of each format: a tar.gz of the merged folder, or the one GGUF file itself.
RESULT_SUFFIX: dict[str, str] = {"safetensors": ".tar.gz", "gguf": ".gguf"}


class ExportOptions(BaseModel):
    """What an export writes: the merged model as a safetensors folder (packed as one ``.tar.gz``) or as one GGUF
    file; ``dtype`` is the precision of the merge and of the safetensors weights, ``gguf_type`` the GGUF's."""

    model_config = ConfigDict(extra="forbid")

    format: ExportFormat = "safetensors"
    dtype: ExportDtype = "float32"
    gguf_type: GgufType | None = Field(default=None, description="For format gguf: f32, f16 (its default) or q8_0.")

    def outtype(self) -> GgufType:
        return self.gguf_type or DEFAULT_GGUF_TYPE


def result_filename(model: str, fmt: str) -> str:
    """The result's file name (``ft:base:org:x:job`` -> ``ft_base_org_x_job.tar.gz``); the archive's top folder is
    the name without its suffix."""
    return safe_name(model) + RESULT_SUFFIX[fmt]
