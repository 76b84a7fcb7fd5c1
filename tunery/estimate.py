"""Estimates before a job runs: tokens, steps, GPU-hours and whether the model fits the GPU's memory.

No torch: the model's size and shapes come from the safetensors headers and ``config.json``.

* **Time**: the rule of thumb ``params x tokens x passes / (5e11 x TFLOPs)`` gives GPU-seconds, with the dense
  bf16 TFLOPs of the configured GPU type (``TUNERY_GPU_TYPE``); tokens are the tokens of one pass over the
  training data (each example cut at ``max_seq_length``) and passes are the epochs. On the CPU the "TFLOPs" is
  calibrated on the 2-core reference machine (bench/trainer_throughput.py: about 135 tokens/s on SmolLM2-135M).
  Preference trainers do more work per example than supervised training (``TRAINER_COST``): a pair is two
  sequences (its tokens are counted as the longer side, as validation reports them), and DPO and KTO also run the
  reference (the adapter disabled) forward only.
* **Memory** (per GPU, bytes): base weights (bf16: 2 per parameter; QLoRA's NF4: about 0.55; fp32 on the CPU: 4),
  trainable parameters x 16 (fp32 master copy, gradient and Adam's two moments; every parameter for full
  fine-tuning), activations ``batch x seq x hidden x layers x 34`` bytes (Korthikanti et al., 16-bit activations
  without recomputation) plus the fp32 logits and their gradient ``batch x seq x vocab x 8``, and 1 GiB of CUDA
  context. It fits when the total is at most 95% of the GPU's memory. With gradient checkpointing (reported
  beside it) only each layer's input is kept, plus one layer's activations.
* **A judge** (a reinforcement job's ``score_model`` or ``label_model`` grader, :class:`JudgeLoad`): it reads each
  sampled answer with its messages (prefill: a forward pass, a third of a forward + backward) and writes up to
  ``max_completions_tokens`` tokens (decoding, counted as a forward + backward a token, as sampling is):
  ``judge params x answers x (read / 3 + written) / (5e11 x TFLOPs)``, ``answers`` being every sampled completion
  of the run. Its memory: its weights (in the run's precision, never NF4: the trainer does not quantize it) and its
  KV cache and logits for a batch of 16 conversations.
* **vLLM sampling** (a reinforcement run whose answers vLLM samples, colocated with the trainer:
  :func:`uses_vllm`): a second copy of the weights (in the run's precision; QLoRA's 4-bit as vLLM loads bitsandbytes)
  and the KV cache of a step's sampled completions at once (``batch_size x num_generations`` sequences of prompt +
  completion), plus 1 GiB of vLLM's own working memory (:func:`sampler_memory`). The trainer gives vLLM that share of
  the GPU (``gpu_memory_utilization``), and of the CPU's memory its KV cache.
* **Measured** (:class:`MeasuredMemory`): where an earlier job of the project on the same base model ran a plan of
  the same :func:`memory_signature` to success, its measured peak (the ``peak_memory_gib`` of its metrics events)
  is reported beside the estimate, and ``fits`` checks that figure instead (:func:`with_measured`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from tunery import hyperparams
from tunery.plan import TrainingPlan
from tunery.settings import Generation
from tunery.tensorfiles import read_header

FLOPS_DIVISOR = 5e11
CUDA_CONTEXT = 1 << 30
# Dense bf16 TFLOPs (fp16 for the T4) and memory in GiB of the GPU types a job can be estimated for.
GPU_TYPES: dict[str, tuple[float, float]] = {
    "h200": (989.0, 141.0),
    "h100-80gb": (989.0, 80.0),
    "a100-80gb": (312.0, 80.0),
    "a100-40gb": (312.0, 40.0),
    "l40s": (362.0, 48.0),
    "a10g": (70.0, 24.0),
    "l4": (121.0, 24.0),
    "t4": (65.0, 16.0),
    # Calibrated so that 135M parameters x 135 tokens/s matches the 2-core reference machine; memory: the RAM
    # a CPU run may use (not a limit that is checked strictly).
    "cpu": (0.0365, 24.0),
}
BYTES_PER_PARAM = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "nf4": 0.55}
# Per trainer: the compute of one example relative to one forward + backward pass over its tokens (a forward pass
# is a third of that), and the sequences of an example whose activations are kept for the backward pass.
#   supervised: one sequence, forward + backward.
#   dpo:  chosen and rejected through the policy (forward + backward) and through the reference (forward): 2 x 4/3.
#   orpo: chosen and rejected through the policy, no reference: 2.
#   kto:  a desirable and an undesirable row per pair; each row forward + backward, plus forward passes of its KL
#         completion through the policy (no gradient) and of both through the reference: 2 x 6/3.
#   grpo: per sampled completion (prompt + completion tokens): forward + backward, and its sampling, token by token,
#         counted as one more forward + backward (decoding one token at a time uses the hardware about a third as
#         well as a forward over a whole row); the completions of a batch are its rows (batch_size x num_generations,
#         applied in estimate_plan); the KL term's reference forward adds 1/3.
TRAINER_COST: dict[str, tuple[float, int]] = {
    "supervised": (1.0, 1),
    "dpo": (8 / 3, 2),
    "orpo": (2.0, 2),
    "kto": (4.0, 2),
    "grpo": (2.0, 1),
}
GRPO_KL_COST = 1 / 3
JUDGE_BATCH = 16  # conversations a judge's generate call (trainer/judge.py)
CHARS_PER_TOKEN = 4  # of a judge's messages, as written in the grader (their {{item.*}} fills are not counted)
TOKENS_PER_MESSAGE = 8  # the chat template's own tokens around a message
# vLLM's working memory beside its weights and KV cache: the activations of its profiling batch (TRL asks for 4,096
# tokens), CUDA graphs and the sampler's logits.
SAMPLER_WORKING = 1 << 30


@dataclass
class ModelShape:
    params: int
    linear_params: int  # weights of the linear layers inside the blocks (what all-linear LoRA adapts)
    lora_per_rank: int  # trainable parameters of all-linear LoRA per unit of rank: sum of (in + out)
    hidden: int
    layers: int
    vocab: int
    kv_width: int = 0  # key (or value) values a token keeps per layer: kv heads x head size (0: hidden, no GQA)

    @property
    def kv_values(self) -> int:
        return self.kv_width or self.hidden


def _safetensors_headers(folder: Path) -> dict[str, Any]:
    tensors: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            tensors.update(read_header(f))
    return tensors


def model_shape(folder: Path) -> ModelShape:
    tensors = _safetensors_headers(folder)
    if not tensors:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    params = linear = per_rank = 0
    for name, info in tensors.items():
        shape = info["shape"]
        params += math.prod(shape)
        if len(shape) == 2 and ".layers." in name and name.endswith(".weight") and "embed" not in name:
            linear += shape[0] * shape[1]
            per_rank += shape[0] + shape[1]
    hidden, heads = int(config.get("hidden_size", 0)), int(config.get("num_attention_heads", 0))
    head_size = int(config.get("head_dim") or (hidden // heads if heads else 0))
    return ModelShape(
        params=params,
        linear_params=linear,
        lora_per_rank=per_rank,
        hidden=hidden,
        layers=int(config.get("num_hidden_layers", 0)),
        vocab=int(config.get("vocab_size", 0)),
        kv_width=int(config.get("num_key_value_heads") or heads) * head_size,
    )


@dataclass
class JudgeLoad:
    """What a model grader's judge costs a reinforcement job: its model's shape, the tokens it reads per judged
    answer besides the answer (its messages) and the most it writes (:func:`judge_loads`)."""

    shape: ModelShape
    prompt_tokens: int
    reply_tokens: int


def judge_loads_of(plan: TrainingPlan, judge_folders: Mapping[str, str]) -> list[JudgeLoad]:
    """What the judges of a reinforcement plan's model graders cost, ``judge_folders`` giving the base model folder
    of each judge the grader names (an ``ft:`` judge's LoRA weighs nothing here). The dry run and the scheduler's
    ``estimated_finish`` both count them with this."""
    from tunery.graders import parse_grader
    from tunery.methods import GRADER_PARAM

    if plan.reinforcement is None or not judge_folders:
        return []
    shapes = {}
    for name, folder in judge_folders.items():
        try:
            shapes[name] = model_shape(Path(folder))
        except (OSError, ValueError):  # a judge whose weights cannot be read here is not counted (the job says so)
            continue
    return judge_loads(parse_grader(plan.reinforcement.grader, GRADER_PARAM), shapes)


def judge_loads(grader: Any, shapes: dict[str, ModelShape]) -> list[JudgeLoad]:
    """The judges of ``grader``'s model graders (a checked grader, tunery/graders), ``shapes`` giving each judge
    model's shape by the name the grader uses; a grader with none (or a judge without a shape) costs nothing here."""
    from tunery.graders import model_graders
    from tunery.graders.judges import sampling

    out = []
    for _, g in model_graders(grader):
        shape = shapes.get(g.model)
        if shape is None:
            continue
        chars = 0
        for message in g.input:
            parts = message.content if isinstance(message.content, list) else [message.content]
            chars += sum(len(p if isinstance(p, str) else str(getattr(p, "text", "") or "")) for p in parts)
        prompt = chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * (len(g.input) + 1)
        out.append(JudgeLoad(shape=shape, prompt_tokens=prompt, reply_tokens=sampling(g).max_tokens))
    return out


class MeasuredMemory(BaseModel):
    """The peak memory an earlier run measured (the ``peak_memory_gib`` its metrics events carry, docs/estimates.md):
    on a GPU PyTorch's peak of allocated memory, on the CPU the trainer process's peak resident memory."""

    peak_memory_gib: float
    job: str  # the job whose run measured it


class Estimate(BaseModel):
    """What a job would cost and whether it fits: the dry run answers it (with the job's fields added), the
    scheduler checks ``fits`` against it."""

    gpu_type: str
    gpu_tflops: float
    gpu_memory_gib: float
    params: int
    trainable_params: int
    adapter: str
    precision: str
    trainer: str
    compute_factor: float
    examples: int
    tokens_per_epoch: int
    trained_tokens_per_epoch: int
    n_epochs: int
    batch_size: int
    steps: int
    max_seq_length: int
    gpu_seconds: float
    gpu_hours: float
    memory_gib: dict[str, float]
    fits: bool
    fits_with_gradient_checkpointing: bool
    # Whether the run checkpoints its activations (each layer's recomputed in the backward pass: about a third more
    # compute): only where the estimate's ``total`` is not well within the memory (:func:`settle_fit`).
    gradient_checkpointing: bool = False
    judge_params: int = 0  # a reinforcement job's judge models' parameters (score_model, label_model graders)
    judge_gpu_seconds: float = 0.0  # their share of gpu_seconds: reading and scoring every sampled answer
    # An earlier run's measured peak with the same memory signature, and what ``fits`` was decided from.
    measured: MeasuredMemory | None = None
    fits_from: Literal["estimate", "measured"] = "estimate"


def memory_signature(plan: TrainingPlan) -> dict[str, Any]:
    """What of a resolved plan decides its run's peak memory, besides the base model and the hardware: two runs that
    agree on it hold the same weights and optimizer state and train micro-batches of at most the same shape (the
    longest examples of their data decide how close each comes to it)."""
    rl = plan.reinforcement
    return {
        "method": plan.method,
        "adapter": plan.adapter,
        "precision": plan.precision,
        "lora": None if plan.adapter == "full" else [plan.lora.r, plan.lora.target_modules],
        "micro_batch_size": plan.micro_batch_size,
        "max_seq_length": plan.max_seq_length,
        "packing": plan.packing,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "sampling": [rl.num_generations, rl.max_completion_length] if rl is not None else None,
    }


def with_measured(est: Estimate, measured: MeasuredMemory | None, gpu: bool) -> Estimate:
    """``est`` with an earlier run's measured peak: ``fits`` then checks that figure (on a GPU plus the CUDA
    context, which PyTorch's peak leaves out) against 95% of the memory, as it checks the estimate's total."""
    if measured is None:
        return est
    need = measured.peak_memory_gib + (CUDA_CONTEXT / float(1 << 30) if gpu else 0.0)
    return est.model_copy(
        update={"measured": measured, "fits_from": "measured", "fits": need <= 0.95 * est.gpu_memory_gib}
    )


def estimate_for_scan(
    shape: ModelShape,
    tokens: Sequence[int],
    trained: Sequence[int],
    plan: TrainingPlan,
    gpu_type: str,
    precision: str | None = None,
    judges: Sequence[JudgeLoad] = (),
    generation: Generation = "transformers",
) -> Estimate:
    """The estimate of a job's plan from its training file's per-example token counts. ``precision``: the one the
    weights are held in, when it differs from the plan's (``auto`` on a GPU whose bf16 support is unknown);
    ``generation``: the trainer's (``TUNERY_TRAINER_GENERATION``)."""
    return estimate_plan(
        shape,
        plan,
        examples=len(tokens),
        tokens_per_epoch=hyperparams.tokens_within(tokens, plan.max_seq_length),
        trained_tokens_per_epoch=sum(trained),
        gpu_type=gpu_type,
        precision=precision,
        judges=judges,
        generation=generation,
    )


def estimate_plan(
    shape: ModelShape,
    plan: TrainingPlan,
    *,
    examples: int,
    tokens_per_epoch: int,
    trained_tokens_per_epoch: int,
    gpu_type: str,
    precision: str | None = None,
    judges: Sequence[JudgeLoad] = (),
    generation: Generation = "transformers",
) -> Estimate:
    """The estimate of a resolved plan over ``examples`` training examples. A reinforcement plan's work is its
    sampled completions: each prompt ``num_generations`` times, each with up to ``max_completion_length`` tokens
    (counted whole: an upper bound), trained as rows of prompt + completion, and each read and scored by the
    ``judges`` of its model graders; where vLLM samples them (``generation``, :func:`uses_vllm`), its memory."""
    rl = plan.reinforcement
    batch, micro, seq = plan.batch_size, plan.micro_batch_size, plan.max_seq_length
    tokens, extra = tokens_per_epoch, 0.0
    steps = math.ceil(examples / plan.batch_size) * plan.n_epochs
    if rl is not None:
        batch *= rl.num_generations
        micro *= rl.num_generations
        seq += rl.max_completion_length
        tokens = (tokens_per_epoch + examples * rl.max_completion_length) * rl.num_generations
        trained_tokens_per_epoch = tokens_per_epoch * rl.num_generations  # as the trainer reports them
        extra = GRPO_KL_COST if rl.kl_coef > 0 else 0.0
        steps = examples // plan.batch_size * plan.n_epochs  # whole batches of prompts (trainer/methods/grpo.py)
    est = estimate(
        shape,
        examples=examples,
        tokens_per_epoch=tokens,
        trained_tokens_per_epoch=trained_tokens_per_epoch,
        n_epochs=plan.n_epochs,
        batch_size=batch,
        micro_batch_size=micro,
        steps=steps,
        max_seq_length=seq,
        gpu_type=gpu_type,
        adapter=plan.adapter,
        lora_r=plan.lora.r,
        precision=precision or plan.precision,
        trainer=plan.method,
    )
    if extra:
        scale = (est.compute_factor + extra) / est.compute_factor
        est.compute_factor += extra
        est.gpu_seconds *= scale
        est.gpu_hours *= scale
    if rl is not None and judges:
        add_judges(est, judges, answers=steps * plan.batch_size * rl.num_generations, answer=rl.max_completion_length)
    if rl is not None and uses_vllm(generation, gpu=gpu_type != "cpu"):
        held = sampler_memory(shape, est.precision, plan.batch_size * rl.num_generations, seq)
        add_memory(est, "sampler", held)
    return est


def uses_vllm(generation: Generation, *, gpu: bool, installed: bool = True) -> bool:
    """Whether vLLM samples a reinforcement run's answers, colocated with its trainer (the one rule: the estimate
    counts its memory, the trainer starts it, trainer/generation.py): asked (``vllm``), or ``auto`` on a GPU where
    the trainer's environment has vLLM (``installed``: the trainer knows; the estimate assumes the trainer image,
    which has it)."""
    return generation == "vllm" or (generation == "auto" and gpu and installed)


def sampler_memory(shape: ModelShape, precision: str, sequences: int, max_len: int) -> float:
    """Bytes vLLM holds to sample ``sequences`` answers at once of up to ``max_len`` tokens (prompt and completion):
    its copy of the weights (``precision``: the run's; ``nf4`` for QLoRA, a bf16 KV cache), their KV cache, and its
    working memory (:data:`SAMPLER_WORKING`)."""
    kv_bytes = BYTES_PER_PARAM["bf16" if precision == "nf4" else precision]
    kv_cache = sequences * max_len * shape.layers * 2 * shape.kv_values * kv_bytes
    return shape.params * BYTES_PER_PARAM[precision] + kv_cache + SAMPLER_WORKING


def add_memory(est: Estimate, part: str, held: float) -> None:
    """Add ``held`` bytes, held through the whole run beside the trainer's own, to ``est``'s memory as ``part``, and
    settle its fit again."""
    gib = float(1 << 30)
    m = est.memory_gib
    m[part] = round(held / gib, 3)
    m["total"] = round(m["total"] + held / gib, 3)
    m["total_with_gradient_checkpointing"] = round(m["total_with_gradient_checkpointing"] + held / gib, 3)
    settle_fit(est)


def add_judges(est: Estimate, judges: Sequence[JudgeLoad], answers: int, answer: int) -> None:
    """Add the judges' time and memory to ``est``: each reads ``answers`` answers of up to ``answer`` tokens with
    its messages, and writes its reply (module docstring)."""
    tflops = GPU_TYPES[est.gpu_type][0]
    precision = "bf16" if est.precision == "nf4" else est.precision  # the trainer does not quantize a judge
    value_bytes = BYTES_PER_PARAM[precision]
    seconds = weights = working = 0.0
    for j in judges:
        read, written = j.prompt_tokens + answer, j.reply_tokens
        seconds += j.shape.params * answers * (read / 3 + written) / (FLOPS_DIVISOR * tflops)
        kv_cache = JUDGE_BATCH * (read + written) * j.shape.hidden * j.shape.layers * 2 * value_bytes
        weights += j.shape.params * value_bytes  # every judge's weights are held; one judges at a time
        working = max(working, kv_cache + JUDGE_BATCH * j.shape.vocab * 4)  # its KV cache and fp32 logits
    est.judge_params = sum(j.shape.params for j in judges)
    est.judge_gpu_seconds = round(seconds, 1)
    est.gpu_seconds = round(est.gpu_seconds + seconds, 1)
    est.gpu_hours = round(est.gpu_seconds / 3600, 4)
    add_memory(est, "judge", weights + working)


def gradient_checkpointing(requested: bool | None, est: Estimate | None, gpu: bool) -> bool:
    """Whether a run recomputes its activations in the backward pass (the one rule: the scheduler's hardware check
    stores it in the job's plan, the dry run reports it, the trainer follows the plan): as asked, else (``auto``,
    None) where ``est`` says so (:func:`settle_fit`: unless the run is well within the memory without it); with no
    estimate, on a GPU, off on the CPU."""
    if requested is not None:
        return requested
    return est.gradient_checkpointing if est is not None else gpu


# A run recomputes its activations unless the estimate's total stays within this share of the memory: the estimate
# is a model, and near the limit a slower run is better than one that runs out of memory (about a third more
# compute against a failed job). Until GPU runs have measured how close the estimate comes, the margin is wide.
CHECKPOINTING_UNLESS_WITHIN = 0.8


def settle_fit(est: Estimate) -> Estimate:
    """Decide ``est``'s fit from its memory figures: ``fits`` (without gradient checkpointing) and
    ``fits_with_gradient_checkpointing`` against 95% of the memory, and ``gradient_checkpointing``: on unless the
    total stays within :data:`CHECKPOINTING_UNLESS_WITHIN` of it. The scheduler stores that decision in the job's
    plan and the trainer follows it (a run well within the memory trains without recomputing its activations); the
    dry run reports it."""
    m, usable = est.memory_gib, 0.95 * est.gpu_memory_gib
    est.fits = m["total"] <= usable
    est.fits_with_gradient_checkpointing = m["total_with_gradient_checkpointing"] <= usable
    est.gradient_checkpointing = m["total"] > CHECKPOINTING_UNLESS_WITHIN * est.gpu_memory_gib
    return est


def estimate(
    shape: ModelShape,
    *,
    examples: int,
    tokens_per_epoch: int,
    trained_tokens_per_epoch: int,
    n_epochs: int,
    batch_size: int,
    steps: int,
    max_seq_length: int,
    gpu_type: str,
    adapter: str = "lora",
    lora_r: int = 16,
    precision: str | None = None,
    trainer: str = "supervised",
    micro_batch_size: int | None = None,
) -> Estimate:
    """``precision`` is how the base weights are held: bf16 on a GPU and fp32 on the CPU unless given; QLoRA's
    base weights are NF4 whatever the compute precision. The activations are a micro-batch's (``batch_size`` when
    it is not given): with gradient accumulation, one micro-batch's at a time."""
    if gpu_type not in GPU_TYPES:
        raise ValueError(f"unknown GPU type {gpu_type!r}; known: {', '.join(GPU_TYPES)}")
    if trainer not in TRAINER_COST:
        raise ValueError(f"unknown trainer {trainer!r}; known: {', '.join(TRAINER_COST)}")
    tflops, memory = GPU_TYPES[gpu_type]
    if adapter == "qlora":
        precision = "nf4"
    elif precision in (None, "auto"):
        precision = "fp32" if gpu_type == "cpu" else "bf16"
    factor, sequences = TRAINER_COST[trainer]
    trainable = shape.params if adapter == "full" else shape.lora_per_rank * lora_r
    gpu_seconds = shape.params * tokens_per_epoch * n_epochs * factor / (FLOPS_DIVISOR * tflops)
    weights = shape.params * BYTES_PER_PARAM[precision]
    optimizer = trainable * 16
    seq = max_seq_length
    rows = (micro_batch_size or batch_size) * sequences
    logits = rows * seq * shape.vocab * 8
    activations = rows * seq * shape.hidden * shape.layers * 34 + logits
    # With gradient checkpointing only each layer's input is kept (2 bytes per value) plus one layer's activations.
    checkpointed = rows * seq * shape.hidden * (shape.layers * 2 + 34) + logits
    base = weights + optimizer + (0 if gpu_type == "cpu" else CUDA_CONTEXT)
    total = base + activations
    gib = float(1 << 30)
    est = Estimate(
        gpu_type=gpu_type,
        gpu_tflops=tflops,
        gpu_memory_gib=memory,
        params=shape.params,
        trainable_params=trainable,
        adapter=adapter,
        precision=precision,
        trainer=trainer,
        compute_factor=round(factor, 4),
        examples=examples,
        tokens_per_epoch=tokens_per_epoch,
        trained_tokens_per_epoch=trained_tokens_per_epoch,
        n_epochs=n_epochs,
        batch_size=batch_size,
        steps=steps,
        max_seq_length=max_seq_length,
        gpu_seconds=round(gpu_seconds, 1),
        gpu_hours=round(gpu_seconds / 3600, 4),
        memory_gib={
            "weights": round(weights / gib, 3),
            "trainable_and_optimizer": round(optimizer / gib, 3),
            "activations": round(activations / gib, 3),
            "total": round(total / gib, 3),
            "total_with_gradient_checkpointing": round((base + checkpointed) / gib, 3),
        },
        fits=False,
        fits_with_gradient_checkpointing=False,
    )
    return settle_fit(est)
