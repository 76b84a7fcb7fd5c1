r"""The Tunery trainer against plain TRL as the tutorials write it and against TRL's best built-in setting: real
tokens/s, tokens per CPU-second, peak memory, the ratios, and padding.

    .venv/bin/python bench/trainer_vs_trl.py [--steps 5] [--batch-size 4] [--max-length 512] [--long-share 0.15]
        [--best-rows batch|auto|N] [--only trl|trl-best|tunery ...] [--no-memory] [--memory-steps 2]
        [--device cpu|cuda] [--shape demo|1b|H,L,A,KV,I] [--trl-checkpointing default|on|off]
        [--tunery-checkpointing auto|on|off] [--gpu-type h100-80gb] [--attention IMPL] [--trl-arg FIELD=VALUE ...]
        [--variant-arg FIELD=VALUE ...] [--variant-attention IMPL]

All train a LoRA adapter (r=16, alpha=32, dropout 0, all linear layers, lr 1e-3) on SmolLM2-135M-Instruct, in fp32
on this machine, for the same number of optimizer steps (``--steps``, TRL's ``max_steps``), on the same generated
mixed-length chat data (seeded): most conversations are short (a question and a short answer), some are long (a long
context and a longer answer).

* plain TRL: ``SFTTrainer`` on the ``messages`` dataset with ``SFTConfig(max_length=L, pad_to_multiple_of=L)``, so
  every example is padded to ``max_length`` (what tutorials do with ``padding="max_length"``), no packing;
  ``batch_size`` examples a step, the first ``steps x batch_size`` conversations;
* TRL's best: ``SFTConfig(packing=True, padding_free=True, packing_strategy="bfd", max_length=L)``: the
  conversations packed best-fit-decreasing into rows of ``max_length`` tokens, ``batch_size`` rows a step (or
  ``--best-rows``: ``auto`` is as many rows as ``batch_size`` conversations fill on average, so that TRL's best and
  Tunery compute about as many tokens a step), each step flattened into one padding-free sequence; it gets as many
  conversations as fill its steps;
* Tunery: the trainer's own path (``trainer.run``: chat tokenization with the assistant mask, ``sft_config``,
  ``build_trainer``), with its defaults: padding-free packing of each batch into one sequence with per-example
  position ids, the LM head scoring only the labelled positions (trainer/kernels.py); ``batch_size`` examples a
  step, as plain TRL.

What each one trains on is its default: TRL's conversational SFT puts the loss on every token, Tunery (as OpenAI's
fine-tuning) on the assistant's tokens only.

Real tokens are the non-padding tokens of the batches; computed tokens are every position the model runs (padding
included). Throughput = real tokens of steps 2..N / the wall time of those steps (forward, backward, optimizer; the
first step is warm-up). The two trainers are built side by side and take turns, one optimizer step each (each in its
own thread, only one computing at a time), so that other work on shared cores slows them alike. The same is printed
per CPU-second of this process (all threads), which other work on shared cores disturbs much less than wall time.
Peak memory: each trainer alone in a fresh process for two steps (``--only NAME --steps 2``; ``--memory-steps``),
its peak RSS (``VmHWM``: the model, the optimizer state and a step's activations), unless ``--no-memory``. Prints
two header lines (the second: device, parameters, precision, rows of TRL's best, each trainer's activation
checkpointing and Tunery's memory estimate), one line per trainer, then the ratios (Tunery / each TRL), then a JSON
summary (with a ``setup`` entry naming the same).

On a GPU (issue 17: at least 1.5x TRL's best's real tokens/s on a 1B-class model, and 20% less peak GPU memory)::

    PYTHONPATH=. python3 bench/trainer_vs_trl.py --device cuda --shape 1b --steps 30 --batch-size 32 \
        --best-rows auto --max-length 1024 --memory-steps 3

* ``--device cuda``: every trainer in bf16 (TRL: ``bf16=True``, ``use_cpu=False``, the base weights loaded in bf16
  as Tunery holds them; Tunery: ``resolve_device("cuda", "bf16", "lora", its checkpointing)``); the step clock
  waits for the GPU (``torch.cuda.synchronize``) before it starts and before it is read. Each peak-memory process
  also reports ``torch.cuda.max_memory_allocated`` (MiB), printed with the ratio Tunery / each TRL.
* ``--shape 1b``: Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, tied embeddings)
  with the demo tokenizer's vocabulary (49,152: 1.07B parameters), random weights (seeded, saved in bf16), made
  once into ``~/.cache/tunery/bench-models/llama-h2048-l16-a32-kv8-i8192-v49152-s0`` (about 30 s) and shared by
  every trainer and process. ``H,L,A,KV,I`` is any other shape (``256,2,4,2,512``: a quick CPU check). With a
  random shape ``--model-dir`` only needs the demo tokenizer's files (tokenizer.json, tokenizer_config.json,
  chat_template.jinja), not its weights.
* Activation checkpointing: the TRL baselines keep TRL's own default on a GPU (on: ``SFTConfig`` sets
  ``gradient_checkpointing=True``) and off on the CPU (``--trl-checkpointing``); Tunery follows its own rule
  (``--tunery-checkpointing auto``): ``tunery.estimate.gradient_checkpointing`` from the job's memory estimate
  (``estimate_for_scan`` with the token counts of Tunery's examples) on ``--gpu-type`` (h100-80gb on cuda, cpu on
  the CPU), as the scheduler decides a job's plan. Each trainer's setting is checked against its trained model's
  layers afterwards (a line says so where they differ).
* The defaults above: 30 steps (29 timed after the warm-up step); batch 32 conversations, about 3,200 tokens a step
  for Tunery (in 4 rows of up to 1,024, trainer/packing.py), and ``--best-rows auto`` gives TRL's best 3 rows of
  1,024 tokens a step, so both compute about as many tokens a step; 32 is the largest batch whose estimate (49 GiB
  of 80) leaves Tunery's checkpointing off (48 and up turn it on: the estimate counts batch x max_length positions,
  not the packed tokens).

What a speed-up is worth, each measured on its own (issue 17: switched on only where it wins): the ``variant`` is a
fourth trainer, Tunery with fields of its ``SFTConfig`` set (``--variant-arg``, repeatable: ``optim=adamw_torch``,
``torch_compile=true``, ``use_liger_kernel=true``) or another attention implementation (``--variant-attention``:
``eager``, ``flex_attention``, ``flash_attention_2``), measured against Tunery as it is; ``--only tunery variant``
runs just the two, taking turns, and the ratio line ``the variant / tunery`` gives the gain. ``--trl-arg`` sets a
field of both TRL baselines (TRL's best with ``use_liger_kernel=true``), ``--attention`` every model's attention.
Options that start threads or processes of their own (``torch_compile``: inductor's compiled kernels and its OpenMP
threads) slow a trainer that takes turns beside them: measure those with ``--only variant`` and ``--only tunery``,
one run each.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import platform
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sft_trainers import TRAINERS, Setup, conversations_for, tunery_checkpointing  # noqa: E402
from bench.trainer_bench import (  # noqa: E402
    BENCH_MODELS,
    DEMO_DIR,
    Baton,
    Counts,
    activation_checkpointing,
    checkpointing_label,
    params_label,
    parse_shape,
    peak_rss_mib,
    random_llama,
    step_timer,
    summary,
)

# The ratios printed (trainer / baseline), and how the lines name them.
RATIOS = (("tunery", "trl"), ("tunery", "trl-best"), ("variant", "tunery"), ("variant", "trl-best"))
TITLES = {"tunery": "Tunery", "variant": "the variant"}


def ratio(t: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, float], str]:
    """The ratios of two trainers' results (``t`` / ``b``), and their line, with ``{name}`` and ``{base}`` left to
    fill."""
    speed = t["real_tokens_per_second"] / b["real_tokens_per_second"]
    cpu = t["real_tokens_per_cpu_second"] / b["real_tokens_per_cpu_second"]
    out = {"real_tokens_per_second": round(speed, 2), "per_cpu_second": round(cpu, 2)}
    line = f"{speed:.2f}x real tokens/s ({{name}} / {{base}}); {cpu:.2f}x per CPU-second"
    if "peak_gpu_mib" in t and "peak_gpu_mib" in b:
        out["peak_gpu_memory"] = round(t["peak_gpu_mib"] / b["peak_gpu_mib"], 3)
        line += f"; peak GPU memory {out['peak_gpu_memory']:.2f}x"
    if "peak_rss_mib" in t and "peak_rss_mib" in b:
        line += f"; peak RSS {t['peak_rss_mib'] / b['peak_rss_mib']:.2f}x"
    return out, line


def config_option(value: str) -> tuple[str, Any]:
    """``--trl-arg`` / ``--tunery-arg``: ``FIELD=VALUE``, the value read as JSON (true, 3, 1e-4) or else as a string."""
    name, sep, raw = value.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"FIELD=VALUE, not {value!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def peak_memory(argv: list[str], name: str, steps: int) -> dict[str, float]:
    """The peak RSS (MiB) of ``name`` trained alone for ``steps`` steps in a fresh process, and on a GPU its peak
    of allocated GPU memory (``torch.cuda.max_memory_allocated``, MiB)."""
    done = subprocess.run(
        [sys.executable, __file__, *argv, "--only", name, "--steps", str(steps), "--no-memory", "--report-rss"],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps for each trainer")
    parser.add_argument("--batch-size", type=int, default=4, help="examples a step (TRL's best: rows of max_length)")
    parser.add_argument("--max-length", type=int, default=512, help="the tutorials' max_length (TRL's default: 1024)")
    parser.add_argument(
        "--best-rows",
        default="batch",
        help="rows of max_length tokens a step of TRL's best: batch (--batch-size, the default), a number, or auto "
        "(as many as --batch-size conversations fill on average, so that it and Tunery train as many tokens a step)",
    )
    parser.add_argument("--long-share", type=float, default=0.15, help="share of long conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=DEMO_DIR,
        help="the demo model folder (converted if missing); with a random --shape only its tokenizer files are read",
    )
    parser.add_argument(
        "--shape",
        type=parse_shape,
        default="demo",
        help="demo (SmolLM2-135M-Instruct), 1b (Llama-3.2-1B's shape: 2048 hidden, 16 layers, 32 heads, 8 KV heads, "
        "8192 MLP) or H,L,A,KV,I: a Llama with random weights (seeded) and the demo tokenizer, made once under "
        f"{BENCH_MODELS}",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: all fp32; cuda: all bf16")
    parser.add_argument(
        "--trl-checkpointing",
        choices=["default", "on", "off"],
        default="default",
        help="the TRL baselines' activation checkpointing; default: off on the CPU, TRL's default (on) on a GPU",
    )
    parser.add_argument(
        "--tunery-checkpointing",
        choices=["auto", "on", "off"],
        default="auto",
        help="Tunery's activation checkpointing; auto: Tunery's rule, from its memory estimate on --gpu-type",
    )
    parser.add_argument(
        "--gpu-type", help="the GPU type of Tunery's memory estimate (tunery.estimate.GPU_TYPES; cuda: h100-80gb)"
    )
    parser.add_argument("--only", nargs="+", choices=list(TRAINERS), help="run these trainers only")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps of each peak-memory run")
    parser.add_argument(
        "--tunery-every-position",
        action="store_true",
        help="Tunery's LM head scores every position, as TRL's does on the CPU (measures trainer/kernels.py)",
    )
    parser.add_argument(
        "--tunery-one-row",
        action="store_true",
        help="Tunery runs every step as one row, even past max_length tokens (measures trainer/packing.py)",
    )
    parser.add_argument(
        "--trl-arg",
        action="append",
        type=config_option,
        default=[],
        metavar="FIELD=VALUE",
        help="set a field of both TRL baselines' SFTConfig (VALUE as JSON, else a string), e.g. use_liger_kernel=true",
    )
    parser.add_argument(
        "--attention", help="every model's attention implementation (sdpa, eager, flex_attention, flash_attention_2)"
    )
    parser.add_argument(
        "--variant-arg",
        action="append",
        type=config_option,
        default=[],
        metavar="FIELD=VALUE",
        help="adds the trainer 'variant': Tunery with this field of its SFTConfig set (VALUE as JSON, else a string), "
        "e.g. optim=adamw_torch, torch_compile=true, use_liger_kernel=true; measured against Tunery as it is",
    )
    parser.add_argument("--variant-attention", help="the variant's attention implementation (adds the variant)")
    parser.add_argument("--report-rss", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    best_rows = {"batch": 0, "auto": -1}.get(args.best_rows)
    if best_rows is None:
        try:
            best_rows = int(args.best_rows)
        except ValueError:
            parser.error(f"--best-rows: batch, auto or a number, not {args.best_rows!r}")
    from tunery.estimate import GPU_TYPES, model_shape

    gpu_type = args.gpu_type or ("h100-80gb" if args.device == "cuda" else "cpu")
    if gpu_type not in GPU_TYPES:
        parser.error(f"--gpu-type: one of {', '.join(GPU_TYPES)}")

    import torch

    from trainer.models import prepare_demo_model
    from trainer.run import configure_logging, set_determinism

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    configure_logging()
    logging.getLogger().setLevel(logging.WARNING)
    set_determinism(args.seed)  # as the trainer does; applies to all
    if args.shape is None:
        model_dir = prepare_demo_model(args.model_dir)
    else:  # only the demo tokenizer is needed: a folder with its files will do (the weights are not read)
        tokenizer_only = (args.model_dir / "tokenizer_config.json").is_file()
        demo_dir = args.model_dir if tokenizer_only else prepare_demo_model(args.model_dir)
        model_dir = random_llama(demo_dir, args.shape, args.seed)
    has_variant = bool(args.variant_arg or args.variant_attention)
    if args.only and "variant" in args.only and not has_variant:
        parser.error("--only variant: the variant is Tunery with --variant-arg or --variant-attention; name one")
    names = [n for n in TRAINERS if (not args.only or n in args.only) and (n != "variant" or has_variant)]
    rows, best_rows = conversations_for(
        model_dir, args.steps, args.batch_size, args.max_length, args.long_share, args.seed, best_rows
    )
    trl_checkpointing = {"on": True, "off": False}.get(args.trl_checkpointing, None if cuda else False)
    setup = Setup(
        model_dir,
        rows,
        args.steps,
        args.batch_size,
        args.max_length,
        args.seed,
        labelled_only=not args.tunery_every_position,
        in_rows=not args.tunery_one_row,
        trl_options=dict(args.trl_arg),
        attention=args.attention,
        variant_options=dict(args.variant_arg),
        variant_attention=args.variant_attention,
        best_rows=best_rows,
        device=args.device,
        trl_checkpointing=trl_checkpointing,
    )
    decided, est = tunery_checkpointing(setup, args.tunery_checkpointing, gpu_type)
    setup = dataclasses.replace(setup, tunery_checkpointing=decided)
    params = model_shape(model_dir).params
    if args.shape is None:
        model_name = "SmolLM2-135M-Instruct"
    else:
        h, layers, heads, kv, inter = args.shape
        model_name = f"random Llama {h}x{layers} ({heads} heads, {kv} KV, MLP {inter}, {params_label(params)})"
    gpu_name = torch.cuda.get_device_name() if cuda else None
    if trl_checkpointing is None:  # TRL's default, as SFTConfig resolves it
        from trl import SFTConfig

        trl_on = bool(next(f.default for f in dataclasses.fields(SFTConfig) if f.name == "gradient_checkpointing"))
        trl_label = f"{checkpointing_label(trl_on)} (TRL's default)"
    else:
        trl_on, trl_label = trl_checkpointing, checkpointing_label(trl_checkpointing)
    tunery_like = ("tunery", "variant")
    chosen = {n: decided if n in tunery_like else trl_on for n in names}
    checkpointing = {
        n: f"{checkpointing_label(decided)} ({args.tunery_checkpointing})" if n in tunery_like else trl_label
        for n in names
    }
    total_gib = est.memory_gib["total"]
    setup_info: dict[str, Any] = {
        "device": args.device,
        "gpu": gpu_name,
        "model": model_name,
        "model_dir": str(model_dir),
        "params": params,
        "precision": setup.precision,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "best_rows": best_rows,
        "max_length": args.max_length,
        "checkpointing": checkpointing,
        "tunery_estimate": {"gpu_type": gpu_type, "total_gib": total_gib, "gpu_memory_gib": est.gpu_memory_gib},
        "torch": torch.__version__,
        "trl_options": setup.trl_options,
        "variant_options": setup.variant_options,
        "variant_attention": args.variant_attention,
        "attention": args.attention or "default",
    }
    if not args.report_rss:
        print(
            f"# Tunery trainer vs plain TRL and TRL's best: {model_name} {setup.precision}, LoRA r=16 all-linear, "
            f"{args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, {len(setup.examples)} "
            f"conversations ({len(rows)} for TRL's best; {args.long_share:.0%} long, seed {args.seed}), torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}",
            flush=True,
        )
        print(
            f"# device {args.device}{f' ({gpu_name})' if cuda else ''}, {params_label(params)} parameters, "
            f"{setup.precision}; TRL's best: {best_rows} rows of {args.max_length} tokens a step; activation "
            f"checkpointing: {', '.join(f'{n} {c}' for n, c in checkpointing.items())}; Tunery's memory estimate "
            f"{total_gib:.1f} GiB ({gpu_type}, {est.gpu_memory_gib:.0f} GiB)",
            flush=True,
        )
        if args.attention or setup.trl_options or has_variant:
            print(
                f"# options: attention {args.attention or 'default'}; TRL {json.dumps(setup.trl_options)}; variant "
                f"(Tunery with) {json.dumps(setup.variant_options)}, attention {args.variant_attention or 'as Tunery'}",
                flush=True,
            )
    baton = Baton(names)
    counts = {n: Counts() for n in names}
    trainers = {}
    for name in names:
        set_determinism(args.seed)
        trainers[name] = TRAINERS[name](setup, step_timer(counts[name], baton, name, cuda), counts[name])
    errors: dict[str, str] = {}

    def train(name: str) -> None:
        try:
            trainers[name].train()
        except BaseException:  # reported below; the others must not wait for a turn forever
            errors[name] = traceback.format_exc()  # not the exception: its frames would hold the GPU memory
            trainers.pop(name, None)
            baton.finish(name)

    threads = [threading.Thread(target=train, args=(n,), name=n) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, trace in errors.items():
        print(trace, file=sys.stderr, flush=True)
        print(f"{name:>8}: failed: {trace.strip().splitlines()[-1]}", flush=True)
    active = {n: activation_checkpointing(t.model) for n, t in trainers.items()}
    for name, on in active.items():
        if on != chosen[name] and not args.report_rss:
            print(f"{name:>8}: activation checkpointing {checkpointing_label(on)}, not as set", flush=True)
    trainers.clear()
    gc.collect()
    if cuda:  # what the trainers left cached, given back before the peak-memory processes
        torch.cuda.empty_cache()
    if args.report_rss:
        if errors:
            return 1
        peak: dict[str, float] = {"peak_rss_mib": peak_rss_mib()}
        if cuda:
            peak["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(peak))
        return 0
    names = [n for n in names if n not in errors]
    results: dict[str, Any] = {}
    for name in names:
        r = summary(name, counts[name])
        r["activation_checkpointing"] = active[name]  # as the trained model ran
        results[name] = r
        print(
            f"{name:>8}: {r['real_tokens_per_second']:8.1f} real tokens/s  ({r['timed_real_tokens']} real tokens in "
            f"{r['timed_seconds']} s over steps 2-{r['steps']}, {r['seconds_per_step']} s/step); padding "
            f"{r['padding_share']:.1%} of {r['computed_tokens']} computed tokens; "
            f"{r['real_tokens_per_cpu_second']} real tokens per CPU-second",
            flush=True,
        )
    if not args.no_memory:
        argv = [a for a in sys.argv[1:] if a not in ("--only", *TRAINERS)]
        # Tunery's decision as made here (the same estimate would make it again), and the rows of TRL's best.
        argv += ["--tunery-checkpointing", checkpointing_label(decided), "--best-rows", str(best_rows)]
        for name in names:
            try:
                peak = peak_memory(argv, name, args.memory_steps)
            except RuntimeError as e:
                errors[name] = str(e)
                print(f"{name:>8}: peak memory run failed: {e}", flush=True)
                continue
            results[name]["peak_rss_mib"] = round(peak["peak_rss_mib"])
            if cuda:
                results[name]["peak_gpu_mib"] = round(peak["peak_gpu_mib"])
                print(
                    f"{name:>8}: peak GPU memory {results[name]['peak_gpu_mib']} MiB allocated, peak RSS "
                    f"{results[name]['peak_rss_mib']} MiB (alone, {args.memory_steps} steps)",
                    flush=True,
                )
            else:
                print(
                    f"{name:>8}: peak RSS {results[name]['peak_rss_mib']} MiB (alone, {args.memory_steps} steps)",
                    flush=True,
                )
    for name, base in RATIOS:
        if name in results and base in results:
            key = f"ratio_{base}" if name == "tunery" else f"ratio_{name}_{base}"
            results[key], line = ratio(results[name], results[base])
            print(f" ratio: {line.format(name=TITLES[name], base=base)}", flush=True)
    results["setup"] = setup_info
    print(json.dumps(results))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
