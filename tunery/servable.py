"""What vLLM can serve: one rule, asked twice.

- The scheduler asks it of a job's resolved LoRA options while the job's files are validated, so a job whose
  adapter the configured vLLM could never load fails before any GPU time, with ``error.param`` naming the option.
- The API asks it of an adapter's files (``adapter_config.json`` and the trainer's ``tunery_manifest.json``)
  before vLLM loads them, so a mismatch is a clear 400 and never vLLM silently answering with something else.

vLLM's LoRA layers wrap the linear layers of attention and MLP blocks; it cannot load an adapter that trains the
output head or the embeddings (``lm_head``, ``embed_tokens``; PEFT's ``modules_to_save`` copies whole modules),
a DoRA adapter, or one whose rank is above the server's ``--max-lora-rank``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunery.plan import TrainingPlan

# Modules vLLM cannot serve as LoRA targets (output head and embeddings under the names common architectures use).
VLLM_REFUSED_MODULES = frozenset({"lm_head", "embed_tokens", "embed_in", "embed_out", "wte", "wpe", "word_embeddings"})
# The ranks vLLM accepts for --max-lora-rank.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

LORA_PARAM = "tunery.training.lora"
# Weight dtypes (safetensors names) vLLM casts to the dtype it serves in.
SERVABLE_DTYPES = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class Unservable:
    """Why vLLM cannot serve an adapter: a message for the client and the request field it is about."""

    message: str
    param: str


def _refused(targets: Any) -> list[str]:
    if not isinstance(targets, list | tuple | set | frozenset):
        return []  # "all-linear": PEFT leaves the output head out
    return sorted({t for t in targets if isinstance(t, str) and t.rsplit(".", 1)[-1] in VLLM_REFUSED_MODULES})


def lora_problem(
    *, r: int, target_modules: Any, max_rank: int, modules_to_save: Any = None, use_dora: bool = False
) -> Unservable | None:
    """The first reason vLLM (``--max-lora-rank max_rank``) cannot load a LoRA adapter of this shape, or None."""
    if r > max_rank:
        return Unservable(
            f"LoRA rank {r} is above the largest rank the vLLM servers load ({max_rank}, their --max-lora-rank; "
            f"TUNERY_VLLM_MAX_LORA_RANK): use r <= {max_rank}, or raise --max-lora-rank on the servers.",
            f"{LORA_PARAM}.r",
        )
    refused = _refused(target_modules)
    if refused:
        return Unservable(
            f"vLLM cannot serve LoRA on {', '.join(refused)} (the output head and embeddings): target the attention "
            'and MLP linear layers, e.g. "all-linear".',
            f"{LORA_PARAM}.target_modules",
        )
    if modules_to_save:
        return Unservable(
            f"vLLM cannot serve an adapter with modules_to_save ({', '.join(map(str, modules_to_save))}).",
            f"{LORA_PARAM}.target_modules",
        )
    if use_dora:
        return Unservable("vLLM cannot serve DoRA adapters.", f"{LORA_PARAM}.use_dora")
    return None


def training_problem(plan: TrainingPlan, max_rank: int) -> Unservable | None:
    """A job's resolved plan against vLLM. A fully fine-tuned model is a model of its own, not an adapter: it is
    served by a vLLM of its own (docs/serving.md), so nothing here refuses it."""
    if plan.adapter == "full":
        return None
    return lora_problem(r=plan.lora.r, target_modules=plan.lora.target_modules, max_rank=max_rank)


def adapter_problem(
    config: Mapping[str, Any],
    manifest: Mapping[str, Any] | None,
    base_model: str,
    max_rank: int,
    tensors: Mapping[str, Any] | None = None,
) -> Unservable | None:
    """An adapter's files against the vLLM server that will load it: a PEFT LoRA, of this base model (the one the
    server serves), of a shape vLLM loads, with weights in a float dtype vLLM casts to its own. ``manifest`` is the
    trainer's (absent for adapters written elsewhere); ``tensors`` the weights' safetensors header."""
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        return Unservable(f"The adapter is a {config.get('peft_type')} adapter; vLLM serves LoRA adapters.", "model")
    odd = sorted({str(t.get("dtype")) for t in (tensors or {}).values()} - SERVABLE_DTYPES)
    if odd:
        return Unservable(f"The adapter's weights are {', '.join(odd)}; vLLM loads F32, F16 or BF16 weights.", "model")
    trained_on = (manifest or {}).get("base_model")
    if trained_on and trained_on != base_model:
        return Unservable(
            f"The adapter was trained on `{trained_on}`, not on `{base_model}`, the model its vLLM server serves.",
            "model",
        )
    problem = lora_problem(
        r=int(config.get("r") or 0),
        target_modules=config.get("target_modules"),
        max_rank=max_rank,
        modules_to_save=config.get("modules_to_save"),
        use_dora=bool(config.get("use_dora")),
    )
    if problem is not None:
        return Unservable(f"This model cannot be served by vLLM: {problem.message}", "model")
    return None
