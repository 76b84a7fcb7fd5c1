"""Who samples a reinforcement run's answers: vLLM colocated with the trainer, or transformers' ``generate``.

TRL's GRPOTrainer samples each step's completions with the policy itself (``generate``), or with vLLM
(``use_vllm``): in colocate mode an engine in the trainer's own process, on its own device, sampling from a copy of
the policy's weights that is replaced after every optimizer step. Which one runs is one rule
(:func:`tunery.estimate.uses_vllm`, from the trainer's ``TUNERY_TRAINER_GENERATION``): vLLM on a GPU where the
trainer's environment has it (the trainer image does), or wherever it is asked for (its CPU build included).

The copy's memory is what the estimate counts (:func:`tunery.estimate.sampler_memory`): on a GPU that share of its
memory is vLLM's ``gpu_memory_utilization``; on the CPU its KV cache is ``VLLM_CPU_KVCACHE_SPACE``.

Where vLLM fails to start (TRL builds it inside GRPOTrainer's constructor), a run under ``auto`` samples with
``generate`` instead, with a warning event (:func:`vllm_start_failure`): vLLM is how ``auto`` samples faster, not what
the job asked for. A run under ``vllm`` (asked for by name) ends with the error.

The policy's weights reach vLLM by its in-place reload (:class:`InPlaceReload`): every weight in one pass (the LoRA
adapter merged in for it), each layer's kernel format rebuilt once it has all its weights. TRL hands vLLM one
tensor at a time, which only works where vLLM keeps each checkpoint tensor as it was loaded; its CPU build repacks
the linear layers' weights for oneDNN, and then has nothing left to load one tensor into.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any

from tunery.estimate import SAMPLER_WORKING, model_shape, sampler_memory, uses_vllm
from tunery.plan import TrainingPlan
from tunery.ports import free_port
from tunery.settings import Generation

from .errors import TrainerError

log = logging.getLogger("tunery.trainer.generation")

GENERATION_SETTING = "TUNERY_TRAINER_GENERATION"
VLLM = "vllm"
TRANSFORMERS = "transformers"
# vLLM's share of a GPU's memory is rounded up to this step, and kept within these bounds.
SHARE_STEP = 0.05
SHARE_BOUNDS = (0.1, 0.9)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_generation(requested: Generation, device: str) -> str:
    """``vllm`` or ``transformers`` for a run on ``device`` (:func:`tunery.estimate.uses_vllm`); vLLM asked for
    where the trainer's environment lacks it is an error before the model is loaded."""
    installed = vllm_installed()
    if requested == VLLM and not installed:
        raise TrainerError(
            f"this server samples reinforcement answers with vLLM ({GENERATION_SETTING}=vllm), and vLLM is not "
            "installed in the trainer's environment",
            code="unsupported_hardware",
        )
    return VLLM if uses_vllm(requested, gpu=device == "cuda", installed=installed) else TRANSFORMERS


def vllm_start_failure(e: BaseException, requested: Generation) -> str | None:
    """The warning of a run whose trainer ``e`` stopped while starting vLLM (raised from vLLM itself or from TRL's
    vLLM generation): under ``auto`` the run samples with ``generate`` instead; under ``vllm`` (asked for by name) it
    ends with a TrainerError (``unsupported_hardware``). None where ``e`` is not vLLM's."""
    if not raised_in_vllm(e):
        return None
    what = (
        f"vLLM could not start to sample this run's answers ({type(e).__name__}: {e}; the trainer's log has vLLM's own)"
    )
    if requested == VLLM:
        raise TrainerError(
            f"{what}. This server asks for vLLM by name ({GENERATION_SETTING}=vllm); with auto the run would sample "
            "with transformers' generate instead",
            code="unsupported_hardware",
        ) from e
    return f"{what}: transformers' generate samples them instead, more slowly"


def raised_in_vllm(e: BaseException) -> bool:
    """Whether ``e`` came out of vLLM's code or TRL's vLLM generation: a frame of their modules in its traceback."""
    tb = e.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module == "vllm" or module.startswith("vllm.") or module == "trl.generation.vllm_generation":
            return True
        tb = tb.tb_next
    return False


def release_memory(device: str) -> None:
    """Memory held by what a failed start left unreferenced, given back (on a GPU, to the device)."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def vllm_config_args(
    plan: TrainingPlan, base_model_path: str, device: str, precision: str, sequences: int, max_len: int
) -> dict[str, Any]:
    """TRL's config for vLLM in colocate mode, sampling ``sequences`` answers at once of up to ``max_len`` tokens
    (prompt and completion) from the model of ``base_model_path``: its share of the GPU's memory from the estimate's
    figure; on the CPU the same figure's KV cache, in whole GiB, as ``VLLM_CPU_KVCACHE_SPACE`` (unless the trainer's
    environment sets it)."""
    shape = model_shape(Path(base_model_path))
    held = sampler_memory(shape, "nf4" if plan.adapter == "qlora" else precision, sequences, max_len)
    args: dict[str, Any] = {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_max_model_length": max_len,
        "vllm_enable_sleep_mode": False,
    }
    # vLLM's rendezvous (a world of this one process): a port the kernel hands out, unless the environment names one.
    # TRL would try 29500 first, which two trainers starting at once on one machine both find free and then both bind.
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if device == "cuda":
        import torch

        _, total = torch.cuda.mem_get_info()
        args["vllm_gpu_memory_utilization"] = gpu_share(held, total)
    else:
        kv_cache = held - shape.params * 4.0 - SAMPLER_WORKING  # fp32 weights on the CPU
        space = max(1, math.ceil(kv_cache / (1 << 30)))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(space))
        # vLLM binds its OpenMP threads to cores and then forbids torch.set_num_threads: in the trainer's process
        # that is the trainer's threads too, which the run sets itself.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    log.info("vLLM samples this run's answers (colocated, %.2f GiB for %d sequences)", held / (1 << 30), sequences)
    return args


def gpu_share(held: float, total: float) -> float:
    """vLLM's ``gpu_memory_utilization``: ``held`` bytes of a GPU of ``total``, rounded up to :data:`SHARE_STEP`,
    within :data:`SHARE_BOUNDS`."""
    steps = math.ceil(held / total / SHARE_STEP - 1e-9)
    low, high = SHARE_BOUNDS
    return round(min(high, max(low, steps * SHARE_STEP)), 2)


def use_in_place_reload(trainer: Any) -> None:
    """Make a GRPOTrainer's colocated vLLM take the policy's weights by vLLM's in-place reload (module docstring)."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or getattr(generation, "mode", None) != "colocate":
        return
    generation.__class__ = in_place_reload_class()


def in_place_reload_class() -> type:
    from trl.generation.vllm_generation import VLLMGeneration

    class InPlaceReload(VLLMGeneration):  # type: ignore[misc]
        """TRL's colocated vLLM, its weights replaced in one pass by vLLM's ``reload_weights``."""

        def sync_weights(self) -> None:
            if self.mode != "colocate":
                super().sync_weights()
                return
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
            self.llm.reset_prefix_cache()

    return InPlaceReload
