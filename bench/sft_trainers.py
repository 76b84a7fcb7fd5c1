"""The three trainers of bench/trainer_vs_trl.py, and its fourth, the variant: what each one is built from
(:class:`Setup`), plain TRL as tutorials write it, TRL's best built-in setting, and the Tunery trainer's own path
(see bench/trainer_vs_trl.py's docstring for what each one is and why)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.trainer_bench import Counts, counting, lora, make_conversations, scratch

if TYPE_CHECKING:
    from tunery.methods import Precision


@dataclass(frozen=True)
class Setup:
    """What every trainer is built from: the model, the data (the first ``steps x batch_size`` conversations for the
    trainers that step over examples, all of them for TRL's best), the step shape, the device and each trainer's
    activation checkpointing."""

    model_dir: Path
    rows: list[dict[str, Any]]
    steps: int
    batch_size: int
    max_length: int
    seed: int
    labelled_only: bool = True  # Tunery's LM head scores the labelled positions only (trainer/kernels.py)
    in_rows: bool = True  # Tunery runs a step over max_length tokens as rows (trainer/packing.py)
    best_rows: int = 0  # rows of max_length tokens a step of TRL's best (0: batch_size)
    device: str = "cpu"  # cpu (fp32) | cuda (bf16)
    trl_checkpointing: bool | None = False  # both TRL baselines; None: TRL's default
    tunery_checkpointing: bool = False  # the plan's decision, as resolve_device gets it
    # What a run measures beside the defaults (--trl-arg, --attention): TRL config fields set on both TRL baselines,
    # and every model's attention implementation (None: transformers' default).
    trl_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    attention: str | None = None
    # The variant: Tunery with these TRL config fields set and this attention (--variant-arg, --variant-attention).
    variant_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    variant_attention: str | None = None

    @property
    def examples(self) -> list[dict[str, Any]]:
        return self.rows[: self.steps * self.batch_size]

    @property
    def precision(self) -> Precision:
        return "bf16" if self.device == "cuda" else "fp32"


def conversations_for(
    model_dir: Path, steps: int, batch_size: int, max_length: int, long_share: float, seed: int, best_rows: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Enough conversations for every trainer: ``steps x batch_size`` of them, and as many more as TRL's best packs
    into ``steps x best_rows`` full rows of ``max_length`` tokens (with a fifth to spare for the packing's gaps), and
    ``best_rows``: as given (0: ``batch_size``), or, when -1, the rows of max_length tokens that ``batch_size``
    conversations fill on average (at least one), so that TRL's best and Tunery train about as many tokens a step."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    n = steps * batch_size
    rows = make_conversations(n, long_share, seed)
    per_row = (
        sum(len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False))["input_ids"]) for r in rows) / n
    )
    if best_rows < 0:
        best_rows = max(1, round(batch_size * per_row / max_length))
    best_rows = best_rows or batch_size
    wanted = max(n, round(steps * best_rows * max_length / per_row * 1.2))
    return (make_conversations(wanted, long_share, seed) if wanted > n else rows), best_rows


def trl_args(setup: Setup, prefix: str, batch_size: int = 0, **options: Any) -> Any:
    """The SFTConfig both TRL baselines share; ``options`` are what makes each one."""
    from trl import SFTConfig

    cuda = setup.device == "cuda"
    # TRL turns activation checkpointing on by default; the Tunery trainer turns it off on CPU. Off here too by
    # default on the CPU, so that the comparison measures batching and packing only (with it on, TRL is slower
    # still); on a GPU TRL's own default (--trl-checkpointing).
    checkpointing: dict[str, Any] = (
        {} if setup.trl_checkpointing is None else {"activation_checkpointing": setup.trl_checkpointing}
    )
    return SFTConfig(
        output_dir=scratch(prefix),
        max_steps=setup.steps,
        per_device_train_batch_size=batch_size or setup.batch_size,
        learning_rate=1e-3,
        max_length=setup.max_length,
        **checkpointing,
        bf16=cuda,  # TRL's default would be bf16 autocast; all run fp32 on the CPU, bf16 on a GPU
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda,
        seed=setup.seed,
        data_seed=setup.seed,
        **{**options, **setup.trl_options},
    )


def trl_trainer(setup: Setup, rows: list[dict[str, Any]], args: Any, timer: Any, counts: Counts) -> Any:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(setup.model_dir))
    # The base weights as Tunery holds them: fp32 on the CPU, bf16 on a GPU (TRL would load a path in fp32).
    dtype = torch.bfloat16 if setup.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(setup.model_dir), dtype=dtype)
    if setup.attention is not None:
        model.set_attn_implementation(setup.attention)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora(),
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.data_collator = counting(trainer.data_collator, counts)
    return trainer


def build_trl(setup: Setup, timer: Any, counts: Counts) -> Any:
    """Plain TRL, tutorial style: conversational dataset, padding to max_length, no packing."""
    args = trl_args(
        setup,
        "bench-trl-",
        pad_to_multiple_of=setup.max_length,  # every sequence padded to max_length
        packing=False,
    )
    return trl_trainer(setup, setup.examples, args, timer, counts)


def build_trl_best(setup: Setup, timer: Any, counts: Counts) -> Any:
    """TRL's best built-in setting: best-fit-decreasing packing into max_length rows, padding-free batches."""
    args = trl_args(setup, "bench-trl-best-", setup.best_rows, packing=True, packing_strategy="bfd", padding_free=True)
    return trl_trainer(setup, setup.rows, args, timer, counts)


def tunery_plan(setup: Setup, gradient_checkpointing: bool | None) -> Any:
    """The training plan of a Tunery job on this data and step shape."""
    from tunery.plan import LoraPlan, TrainingPlan

    return TrainingPlan(
        n_epochs=1,
        batch_size=setup.batch_size,
        learning_rate=1e-3,
        max_seq_length=setup.max_length,
        precision=setup.precision,
        gradient_checkpointing=gradient_checkpointing,
        lora=LoraPlan(r=16, alpha=32, dropout=0.0, target_modules="all-linear"),
    )


def tunery_tokens(setup: Setup, tokenizer: Any) -> Any:
    """Tunery's examples, tokenized as a job tokenizes them (chat template, assistant mask, cut at max_length)."""
    from trainer.chat import ChatTokenizer, end_of_turn_tokens
    from tunery.data_jsonl import parse_jsonl

    data = "".join(json.dumps(r) + "\n" for r in setup.examples).encode()
    records = parse_jsonl([data]).records
    chat = ChatTokenizer(tokenizer, end_of_turn_tokens(tokenizer))
    return chat.tokenize_all(records, max_length=setup.max_length)  # type: ignore[arg-type]


def tunery_checkpointing(setup: Setup, requested: str, gpu_type: str) -> tuple[bool, Any]:
    """Whether Tunery checkpoints its activations (``--tunery-checkpointing``): as asked, or by Tunery's own rule
    (``auto``, as the scheduler's hardware check decides a job's plan): from the memory estimate of the job on
    ``gpu_type``, with the token counts of Tunery's examples. Returns the decision and the estimate."""
    from transformers import AutoTokenizer

    from tunery.estimate import estimate_for_scan, gradient_checkpointing, model_shape

    train = tunery_tokens(setup, AutoTokenizer.from_pretrained(str(setup.model_dir)))
    tokens = [len(e.input_ids) for e in train.examples]
    trained = [e.n_trained for e in train.examples]
    plan = tunery_plan(setup, None)
    est = estimate_for_scan(model_shape(setup.model_dir), tokens, trained, plan, gpu_type, setup.precision)
    asked = {"auto": None, "on": True, "off": False}[requested]
    return gradient_checkpointing(asked, est, setup.device == "cuda"), est


def build_tunery(setup: Setup, timer: Any, counts: Counts, variant: bool = False) -> Any:
    """The Tunery trainer's own configuration and data path, with its defaults; the ``variant``: with the options it
    measures (``--variant-arg``, ``--variant-attention``)."""
    from trainer.config import trl_args
    from trainer.kernels import fused_head_model
    from trainer.loading import load_base_model, lora_config, resolve_device
    from trainer.methods import get_method
    from trainer.methods.supervised import tokenized_datasets
    from trainer.packing import RowCollator

    plan = tunery_plan(setup, setup.tunery_checkpointing)
    device = resolve_device(setup.device, plan.precision, plan.adapter, plan.gradient_checkpointing)
    model, tokenizer = load_base_model(str(setup.model_dir), device)
    attention = (setup.variant_attention if variant else None) or setup.attention
    if attention is not None:
        model.set_attn_implementation(attention)
    train = tunery_tokens(setup, tokenizer)
    sft = get_method("supervised")
    # trainer.config.trl_config, with the fields the variant sets
    common = trl_args(plan, seed=setup.seed, output_dir=scratch("bench-tunery-"), choice=device)
    options = setup.variant_options if variant else {}
    args = sft.config_class()(**{**sft.config_args(common, plan, device, ""), **options})
    trainer = sft.build_trainer(
        model, tokenizer, args, lora_config(plan), tokenized_datasets(train), [timer], plan=plan
    )
    if not setup.in_rows and isinstance(trainer.data_collator, RowCollator):  # one row a step, to measure the rows
        trainer.data_collator = trainer.data_collator.collate
    trainer.data_collator = counting(trainer.data_collator, counts)
    if not setup.labelled_only:  # undo trainer/kernels.py, to measure it
        head = fused_head_model(trainer)
        head.forward = head.forward.__wrapped__
    return trainer


def build_variant(setup: Setup, timer: Any, counts: Counts) -> Any:
    return build_tunery(setup, timer, counts, variant=True)


TRAINERS = {"trl": build_trl, "trl-best": build_trl_best, "tunery": build_tunery, "variant": build_variant}
