"""Merged-model exports (``/v1/tunery/exports``, Tunery's extension, docs/exports.md): an existing ``ft:`` model or
checkpoint model merged into its base (a plain model that transformers and vLLM load without PEFT, as safetensors;
or GGUF for llama.cpp and Ollama), as a short job of its own whose one result is a file of the project. OpenAI has no
such object: the shapes follow its conventions (``object``, ``created_at``, cursor lists, a job's ``status`` and
``error``) and every request field is Tunery's, so an unknown one is a 400. An export is never a fine-tuning job."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api.protocol.base import CursorPage, Name, OpenAIResponse, PageRequest, TuneryExtension
from api.protocol.jobs import FineTuningJobError
from tunery.exports import ExportDtype, ExportFormat, GgufType
from tunery.jobstate import JobStatus


class CreateExportRequest(TuneryExtension):
    model: Name = Field(description="The fine-tuned model (ft:...) or checkpoint model (ft:...:ckpt-step-N) to export.")
    format: ExportFormat = Field(
        "safetensors",
        description="safetensors: the merged model's folder (config, weights, tokenizer, chat template) as one "
        ".tar.gz; gguf: one GGUF file (Llama-architecture models only).",
    )
    dtype: ExportDtype = Field("float32", description="The precision of the merge and of the safetensors weights.")
    gguf_type: GgufType | None = Field(None, description="For format gguf: f32, f16 (the default) or q8_0.")


class ListExportsRequest(PageRequest):
    pass


class Export(OpenAIResponse):
    """An export: a short job (``validating_files`` -> ``queued`` -> ``running`` -> ``succeeded``, or ``failed`` or
    ``cancelled``) whose result is one file, ``result_file``."""

    id: str
    object: Literal["tunery.export"] = "tunery.export"
    created_at: int
    finished_at: int | None
    status: JobStatus
    model: str = Field(description="The model exported")
    base_model: str = Field(description="The base model it is merged into")
    format: ExportFormat
    dtype: ExportDtype
    gguf_type: GgufType | None = Field(description="The GGUF's type (format gguf only)")
    error: FineTuningJobError | None
    result_file: str | None = Field(
        description="Once succeeded: the file (purpose fine-tune-results) holding the .tar.gz or the .gguf; its "
        "content, GET /v1/files/{id}/content, is base64-encoded as every fine-tune-results file's"
    )


class ExportList(CursorPage[Export]):
    """The project's exports, newest first."""
