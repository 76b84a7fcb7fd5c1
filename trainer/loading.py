"""Model loading: the run's device and precision, the base model (4-bit for QLoRA), the adapter it trains (a fresh
LoRA, or the parent adapter of an ``ft:`` model it continues), and determinism."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.methods import ADAPTER_PARAM, PRECISION_PARAM
from tunery.plan import TrainingPlan
from tunery.storage import ObjectStore

from .errors import TrainerError

log = logging.getLogger("tunery.trainer")


@dataclass
class DeviceChoice:
    device: str  # cpu | cuda
    dtype: Any  # torch dtype of the base weights (QLoRA: of the layers left unquantized, and the compute dtype)
    bf16: bool  # mixed precision of the Trainer
    fp16: bool = False
    precision: str = "fp32"  # bf16 | fp16 | fp32, as resolved
    adapter: str = "lora"  # lora | qlora | full
    gradient_checkpointing: bool = False  # activations recomputed in the backward pass (the plan's decision)
    generation: str = "transformers"  # vllm | transformers: who samples a reinforcement run's answers


def resolve_device(
    requested: str, precision: str = "auto", adapter: str = "lora", gradient_checkpointing: bool | None = None
) -> DeviceChoice:
    """Device and precision of the run (docs/adapters.md): ``auto`` is bf16 on a GPU that supports it, fp16 on an
    older GPU, fp32 on the CPU. Anything the hardware cannot run is an error here, before the model is loaded.
    ``gradient_checkpointing``: the plan's decision (None, from a plan stored before it was decided: on a GPU)."""
    import torch

    requested = (requested or "auto").lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise TrainerError(f"unknown device {requested!r} (expected auto, cpu or cuda)")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainerError("the job asks for a CUDA GPU but none is available to the trainer")
    device = "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    precision = (precision or "auto").lower()
    if precision == "auto":
        precision = "fp32" if device == "cpu" else "bf16" if bf16_ok else "fp16"
    if precision not in ("bf16", "fp16", "fp32"):
        raise TrainerError(f"unknown precision {precision!r}", code="unsupported_hardware", param=PRECISION_PARAM)
    if precision in ("bf16", "fp16") and device == "cpu":
        raise TrainerError(
            f"precision {precision!r} needs a GPU; this trainer runs on the CPU",
            code="unsupported_hardware",
            param=PRECISION_PARAM,
        )
    if precision == "bf16" and not bf16_ok:
        raise TrainerError(
            "precision 'bf16' needs a GPU with bf16 support; this GPU has none (use 'fp16')",
            code="unsupported_hardware",
            param=PRECISION_PARAM,
        )
    if adapter == "qlora":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainerError(
                "adapter 'qlora' needs bitsandbytes, which is not installed in the trainer's environment",
                code="unsupported_hardware",
                param=ADAPTER_PARAM,
            )
    # Weights: bf16 in bf16; fp16 mixed precision keeps fp32 weights for full fine-tuning (the gradient scaler needs
    # fp32 master weights) and fp16 frozen base weights under an adapter (its own weights stay fp32).
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        precision, torch.float32 if adapter == "full" else torch.float16
    )
    checkpointing = device == "cuda" if gradient_checkpointing is None else gradient_checkpointing
    return DeviceChoice(device, dtype, precision == "bf16", precision == "fp16", precision, adapter, checkpointing)


def quantization_config(choice: DeviceChoice) -> Any:
    """QLoRA: the base model's linear layers in 4-bit NF4 (bitsandbytes), computing in bf16 on a GPU (fp16 on one
    without bf16) and in fp32 on the CPU; the LoRA adapters on top train in that compute dtype or higher."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=choice.dtype,
    )


def load_base_model(path: str, choice: DeviceChoice) -> tuple[Any, Any]:
    """The base model (safetensors only, no remote code) and its tokenizer, from a local folder; QLoRA loads it in
    4-bit NF4 and prepares it for k-bit training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise TrainerError(f"base model folder {path} has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise TrainerError(f"base model folder {path} has no safetensors weights")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    extra: dict[str, Any] = {}
    if choice.adapter == "qlora":
        extra = {"quantization_config": quantization_config(choice), "device_map": {"": choice.device}}
    model = AutoModelForCausalLM.from_pretrained(
        str(folder),
        dtype=choice.dtype,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        **extra,
    )
    if choice.adapter == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=choice.gradient_checkpointing)
    return model, tokenizer


def fetch_model_files(store: ObjectStore, prefix: str, folder: Path) -> Path:
    """The files of a checkpoint or final model (an adapter, or a full model's weights, config and tokenizer) from
    the object store into ``folder``: the top level only, never a pickle."""
    prefix = prefix.strip("/") + "/"
    folder.mkdir(parents=True, exist_ok=True)
    for key in store.list(prefix):
        name = key[len(prefix) :]
        if "/" not in name and not name.endswith((".bin", ".pt", ".pkl", ".pth")):
            store.get_file(key, folder / name)
    return folder


def load_parent_adapter(store: ObjectStore, prefix: str, model: Any, workdir: str) -> Any:
    """Fine-tuning a fine-tuned model: the parent's LoRA adapter (safetensors, from the object store) on the base
    model, trainable, so training continues from it. Pickles are never copied."""
    from peft import PeftModel

    prefix = prefix.strip("/") + "/"
    folder = Path(workdir) / "parent-adapter"
    folder.mkdir(parents=True, exist_ok=True)
    names = {key[len(prefix) :]: key for key in store.list(prefix) if "/" not in key[len(prefix) :]}
    wanted = ("adapter_config.json", "adapter_model.safetensors")
    if any(n not in names for n in wanted):
        raise TrainerError(
            f"the fine-tuned model to start from has no LoRA adapter under {prefix}",
            code="model_not_available",
            param="model",
        )
    for name in wanted:
        store.get_file(names[name], folder / name)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=True)


def lora_config(plan: TrainingPlan) -> Any:
    """PEFT's LoRA config of a fresh adapter (LoRA, or QLoRA on the 4-bit base)."""
    from peft import LoraConfig

    return LoraConfig(
        r=plan.lora.r,
        lora_alpha=plan.lora.alpha,
        lora_dropout=plan.lora.dropout,
        target_modules=plan.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def set_determinism(seed: int) -> None:
    import torch
    from transformers import set_seed

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every torch.empty() with NaN, which makes CPU training ~8x slower.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = False


def attach_adapter(
    model: Any, plan: TrainingPlan, store: ObjectStore, init_adapter_prefix: str | None, workdir: str
) -> tuple[Any, Any]:
    """The model and the ``peft_config`` the TRL trainer gets: full fine-tuning trains the model itself (no config);
    a job on an ``ft:`` model continues that model's adapter (loaded trainable, no config); otherwise TRL wraps the
    model with a fresh LoRA adapter from the config."""
    if init_adapter_prefix:
        log.info("continuing the adapter of %s", init_adapter_prefix)
        return load_parent_adapter(store, init_adapter_prefix, model, workdir), None
    if plan.adapter == "full":
        return model, None
    return model, lora_config(plan)


def eval_dtype(model: Any, precision: str) -> Any | None:
    """The dtype an eval report measures ``model`` in, when not its own (``tunery.eval.precision``, docs/evals.md):
    bf16 for an fp32 model on a CPU that runs bf16 natively (AVX512-BF16 or AMX: about twice as fast, losses within
    about 1%), under ``auto``. None (the model's own dtype) for ``full``, on a GPU (which trains in bf16 or fp16
    already) and for a quantized model (its layers compute in their own dtype)."""
    import torch

    if precision != "auto" or getattr(model, "hf_quantizer", None) is not None:
        return None
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return None
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


class WeightsIn:
    """``model``'s floating-point parameters also in ``dtype``, converted once, at the first use: each ``with
    weights.active():`` block runs the model in them, and then on the very tensors it had (nothing changes with
    None). The training goes on from bit-identical weights, which a cast back would not give. An eval report scores
    and drafts its answers in them (trainer/greedy.py), swapping them in and out without converting again.

    A LoRA adapter stays unmerged: its product is computed apart from its base layer's, as a GPU run computes it. A
    merge into bf16 copies would be faster, but early in a run the adapter's delta is smaller than bf16's rounding
    of the weights it is added to, and the merged model then answers as the base does."""

    def __init__(self, model: Any, dtype: Any | None):
        self.model, self.dtype = model, dtype
        self._copies: list[tuple[Any, Any, Any]] | None = None  # (parameter, its own tensor, the copy in dtype)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        import torch

        if self._copies is None:
            with torch.no_grad():
                self._copies = [
                    (p, p.data, p.data.to(self.dtype))
                    for p in self.model.parameters()
                    if p.is_floating_point() and p.dtype != self.dtype
                ]
        for p, _, copy in self._copies:
            p.data = copy
        try:
            yield
        finally:
            for p, own, _ in self._copies:
                p.data = own
