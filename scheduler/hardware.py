"""Can the trainer's hardware run a job's adapter and precision? Checked while the job's files are validated, so a
job that cannot run fails before it is queued, never mid-run (docs/adapters.md). No torch here: what the trainer
will have is read from the settings (``TUNERY_TRAINER_DEVICE``, ``TUNERY_GPU_TYPE``), from ``nvidia-smi`` for the
local runner, and from the installed packages for the local runner (``bitsandbytes``)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.k8s_manifests import gpus_per_run
from tunery import estimate as estimates
from tunery.jobstate import ErrorCode, JobError
from tunery.plan import TrainingPlan
from tunery.settings import Settings

# GPU types of tunery/estimate.py without bf16 (compute capability below 8.0).
NO_BF16_GPU_TYPES = frozenset({"t4"})


@dataclass
class Hardware:
    """What the trainer of a job will run on."""

    gpu: bool
    bf16: bool | None  # None: not known here (the trainer checks again before it loads the model)
    bitsandbytes: bool | None  # None: not known here (a Kubernetes pod runs the trainer image, which has it)
    where: str  # for messages: "the CPU (TUNERY_TRAINER_DEVICE=cpu)", ...


@dataclass
class HardwareCheck:
    error: JobError | None = None
    precision: str = "fp32"  # resolved: bf16 | fp16 | fp32 (``auto`` when the GPU's bf16 support is not known)
    warnings: list[str] = field(default_factory=list)
    gradient_checkpointing: bool = False  # decided (tunery.estimate.gradient_checkpointing)


def local_gpu_bf16() -> bool | None:
    """Whether the local GPU supports bf16 (compute capability 8.0 or more), from nvidia-smi; None if unknown."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        ).stdout
        caps = [float(line) for line in out.split() if line.strip()]
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return min(caps) >= 8.0 if caps else None


def detect(trainer_device: str, gpu_type: str, cluster_gpus: int | None, local_cuda: bool) -> Hardware:
    """The trainer's hardware. ``cluster_gpus``: the GPUs of a Kubernetes run (None for the local runner)."""
    device = (trainer_device or "auto").lower()
    if device == "cpu":
        return Hardware(
            False, False, _bnb_local() if cluster_gpus is None else None, "the CPU (TUNERY_TRAINER_DEVICE=cpu)"
        )
    if cluster_gpus is not None:  # a pod on a GPU node, from the trainer image
        gpu = device == "cuda" or cluster_gpus > 0
        bf16 = None if gpu_type == "cpu" else gpu_type not in NO_BF16_GPU_TYPES
        where = f"a {gpu_type} GPU" if gpu else "the CPU (TUNERY_K8S_GPUS_PER_JOB=0)"
        return Hardware(gpu, bf16 if gpu else False, None, where)
    if device == "cuda" or local_cuda:
        bf16 = local_gpu_bf16()
        if bf16 is None and gpu_type != "cpu":
            bf16 = gpu_type not in NO_BF16_GPU_TYPES
        return Hardware(True, bf16, _bnb_local(), "the local GPU")
    return Hardware(False, False, _bnb_local(), "the CPU (no GPU is visible)")


def _bnb_local() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def trainer_hardware(settings: Settings) -> Hardware:
    """The hardware of this deployment's trainer runs (not of the process asking): a Kubernetes pod with the
    configured GPUs, or the local runner's machine. Used by the scheduler and the dry run alike."""
    cluster_gpus = gpus_per_run(settings) if settings.scheduler_backend == "kubernetes" else None
    return detect(settings.trainer_device, settings.gpu_type, cluster_gpus, cuda_visible())


def cuda_visible() -> bool:
    """Whether a GPU is visible on this machine, without importing torch (the control plane never does)."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def check(
    plan: TrainingPlan, hw: Hardware, memory: Callable[[str], estimates.Estimate | None] | None = None
) -> HardwareCheck:
    """The job's resolved plan (its adapter and precision) against the hardware: an OpenAI-shaped error (with
    ``param``), the precision to train in, whether it checkpoints its activations (decided from the job's memory
    estimate on this hardware, ``memory(precision)``, where it asked ``auto``), and warnings for the job's events. A
    full fine-tuning that does not fit, even so, is refused."""
    adapter, precision = plan.adapter, plan.precision
    out = HardwareCheck()

    def fail(message: str, param: str) -> HardwareCheck:
        return HardwareCheck(JobError(ErrorCode.unsupported_hardware, message, param), out.precision, out.warnings)

    if precision in ("bf16", "fp16") and not hw.gpu:
        return fail(
            f"precision {precision!r} needs a GPU, but this job's trainer runs on {hw.where}; use 'fp32' or 'auto'.",
            "tunery.training.precision",
        )
    if precision == "bf16" and hw.bf16 is False:
        return fail(
            f"precision 'bf16' needs a GPU with bf16 support (compute capability 8.0+), but {hw.where} has none; "
            "use 'fp16' or 'auto'.",
            "tunery.training.precision",
        )
    if precision == "auto":
        precision = "fp32" if not hw.gpu else "bf16" if hw.bf16 else "fp16" if hw.bf16 is False else "auto"
    out.precision = precision
    if adapter == "qlora":
        if hw.bitsandbytes is False:
            return fail(
                "adapter 'qlora' needs bitsandbytes in the trainer's environment (pip install bitsandbytes); "
                "use 'lora' instead.",
                "tunery.training.adapter",
            )
        if not hw.gpu:
            out.warnings.append(
                "QLoRA on the CPU: the 4-bit base model runs through bitsandbytes' slow CPU path (several times "
                "slower than LoRA on the CPU, same memory saving)."
            )
    est = memory(precision) if memory is not None else None
    checkpointing = estimates.gradient_checkpointing(plan.gradient_checkpointing, est, hw.gpu)
    out.gradient_checkpointing = checkpointing
    if adapter == "full" and est is not None:
        fits = est.fits_with_gradient_checkpointing if checkpointing else est.fits
        if not fits:
            need = est.memory_gib["total_with_gradient_checkpointing" if checkpointing else "total"]
            return fail(
                f"full fine-tuning of this model needs about {need:.1f} GiB, more than the "
                f"{est.gpu_memory_gib:.0f} GiB of {hw.where} (TUNERY_GPU_TYPE={est.gpu_type}); "
                "use 'lora' or 'qlora', or a smaller batch_size or max_seq_length"
                + ("" if checkpointing else ", or tunery.training.gradient_checkpointing 'auto' or true")
                + ".",
                "tunery.training.adapter",
            )
    return out
