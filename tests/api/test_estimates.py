"""Estimates before a job runs: model shapes from safetensors headers, the GPU-hours rule, memory fit, the dry run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.api.test_jobs import preference_lines
from tests.conftest import TINY, chat_lines
from tunery.estimate import (
    FLOPS_DIVISOR,
    GPU_TYPES,
    JUDGE_BATCH,
    SAMPLER_WORKING,
    TRAINER_COST,
    JudgeLoad,
    MeasuredMemory,
    ModelShape,
    estimate,
    estimate_plan,
    judge_loads,
    memory_signature,
    model_shape,
    uses_vllm,
    with_measured,
)
from tunery.methods import METHODS
from tunery.plan import LoraPlan, ReinforcementPlan, TrainingPlan

# Roughly Llama-3-8B: 8.0e9 parameters, 32 layers of 4096, 128k vocabulary.
LLAMA_8B = ModelShape(
    params=8_030_000_000,
    linear_params=6_980_000_000,
    lora_per_rank=2_621_440,
    hidden=4096,
    layers=32,
    vocab=128_256,
    kv_width=1024,  # 8 key/value heads of 128 (grouped-query attention)
)


def test_model_shape_matches_the_model_and_peft(tiny_model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = model_shape(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert shape.params == sum(p.numel() for p in model.parameters())  # tied embeddings are stored once
    assert (shape.hidden, shape.layers, shape.vocab) == (
        model.config.hidden_size,
        model.config.num_hidden_layers,
        model.config.vocab_size,
    )
    # A token's keys (or values) in a layer: its key/value heads' width, as the model's own k_proj writes them.
    assert shape.kv_values == model.model.layers[0].self_attn.k_proj.out_features
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert shape.lora_per_rank * 16 == trainable  # all-linear LoRA: r x (in + out) per adapted layer


def _estimate(shape: ModelShape, gpu: str, adapter: str = "lora", batch: int = 8, seq: int = 4096, **kw):
    return estimate(
        shape,
        examples=10_000,
        tokens_per_epoch=5_000_000,
        trained_tokens_per_epoch=2_000_000,
        n_epochs=3,
        batch_size=batch,
        steps=3750,
        max_seq_length=seq,
        gpu_type=gpu,
        adapter=adapter,
        **kw,
    )


def test_gpu_hours_rule_and_memory_fit():
    llama8b = LLAMA_8B
    h100 = _estimate(llama8b, "h100-80gb", batch=1, seq=2048)
    rule = 8_030_000_000 * 5_000_000 * 3 / (FLOPS_DIVISOR * GPU_TYPES["h100-80gb"][0])
    assert h100.gpu_seconds == pytest.approx(rule, rel=1e-3)
    assert h100.gpu_hours == pytest.approx(h100.gpu_seconds / 3600, abs=1e-3)
    assert _estimate(llama8b, "a100-80gb").gpu_seconds > h100.gpu_seconds  # a slower GPU takes longer
    assert h100.precision == "bf16" and h100.fits
    # Batch 8 of 4096 tokens keeps ~150 GB of activations: only gradient checkpointing makes it fit.
    big = _estimate(llama8b, "h100-80gb", batch=8, seq=4096)
    assert not big.fits and big.fits_with_gradient_checkpointing
    assert big.gradient_checkpointing and not h100.gradient_checkpointing  # on only where it is needed
    assert h100.trainable_params == 2_621_440 * 16
    # Full fine-tuning of 8B needs ~16 bytes per parameter for weights and optimizer: not on one 80 GB GPU.
    full = _estimate(llama8b, "h100-80gb", adapter="full", batch=1, seq=1024)
    assert not full.fits and full.memory_gib["trainable_and_optimizer"] > 100
    # QLoRA's 4-bit base fits a 16 GB card at a small batch where bf16 LoRA does not.
    assert _estimate(llama8b, "t4", adapter="qlora", batch=1, seq=1024).fits
    assert not _estimate(llama8b, "t4", batch=1, seq=1024).fits
    with pytest.raises(ValueError, match="unknown GPU type"):
        _estimate(llama8b, "tpu-v5")


def test_a_measured_peak_decides_the_fit():
    """An earlier run's measured peak replaces the estimate's total in ``fits`` (plus the CUDA context on a GPU,
    which PyTorch's peak leaves out); the estimate's figures stay beside it."""
    h100 = _estimate(LLAMA_8B, "h100-80gb", batch=1, seq=2048)
    assert with_measured(h100, None, gpu=True) is h100 and h100.fits_from == "estimate" and h100.fits
    over = with_measured(h100, MeasuredMemory(peak_memory_gib=75.5, job="ftjob-a"), gpu=True)
    assert (over.fits, over.fits_from, over.measured.job) == (False, "measured", "ftjob-a")  # 76.5 > 0.95 x 80
    under = with_measured(h100, MeasuredMemory(peak_memory_gib=74.9, job="ftjob-b"), gpu=True)
    assert under.fits and under.memory_gib == h100.memory_gib
    cpu = _estimate(LLAMA_8B, "cpu", batch=1, seq=2048)
    assert with_measured(cpu, MeasuredMemory(peak_memory_gib=22.7, job="ftjob-c"), gpu=False).fits  # 0.95 x 24


def test_the_memory_signature_is_what_decides_memory():
    """Two plans share a signature when they differ only in what does not change a run's memory (epochs, learning
    rate, accumulation of the same micro-batches, LoRA's alpha); a micro-batch, length, adapter, rank, method or
    sampling of another size changes it."""
    plan = TrainingPlan(n_epochs=3, batch_size=8, learning_rate=1e-4, gradient_accumulation_steps=2)
    same = [
        plan.model_copy(update={"n_epochs": 1, "learning_rate": 5e-4, "warmup_ratio": 0.1}),
        plan.model_copy(update={"batch_size": 16, "gradient_accumulation_steps": 4}),  # micro-batches of 4 still
        plan.model_copy(update={"lora": LoraPlan(alpha=8)}),
    ]
    assert all(memory_signature(p) == memory_signature(plan) for p in same)
    rl = ReinforcementPlan(
        grader={"type": "string_check"}, num_generations=4, max_completion_length=64, kl_coef=0.0, temperature=1.0
    )
    other = [
        plan.model_copy(update={"gradient_accumulation_steps": 1}),  # micro-batches of 8
        plan.model_copy(update={"max_seq_length": 512}),
        plan.model_copy(update={"adapter": "full"}),
        plan.model_copy(update={"lora": LoraPlan(r=64)}),
        plan.model_copy(update={"method": "dpo"}),
        plan.model_copy(update={"packing": False}),
        plan.model_copy(update={"precision": "fp32"}),
        plan.model_copy(update={"reinforcement": rl}),
        plan.model_copy(update={"gradient_checkpointing": True}),
    ]
    assert len({str(memory_signature(p)) for p in [plan, *other]}) == len(other) + 1


def test_preference_trainers_cost_more_per_example_than_supervised():
    sft = _estimate(LLAMA_8B, "h100-80gb", batch=2, seq=2048)
    assert sft.trainer == "supervised" and sft.compute_factor == 1.0
    # DPO: chosen and rejected forward + backward through the policy, forward through the reference.
    dpo = _estimate(LLAMA_8B, "h100-80gb", batch=2, seq=2048, trainer="dpo")
    assert dpo.gpu_seconds == pytest.approx(sft.gpu_seconds * 2 * (3 + 1) / 3, rel=1e-3)
    orpo = _estimate(LLAMA_8B, "h100-80gb", batch=2, seq=2048, trainer="orpo")
    assert orpo.gpu_seconds == pytest.approx(sft.gpu_seconds * 2, rel=1e-3)  # no reference model
    kto = _estimate(LLAMA_8B, "h100-80gb", batch=2, seq=2048, trainer="kto")
    assert kto.gpu_seconds > dpo.gpu_seconds > orpo.gpu_seconds > sft.gpu_seconds
    # A pair keeps two sequences' activations: as much as a supervised batch twice as large.
    twice = _estimate(LLAMA_8B, "h100-80gb", batch=4, seq=2048)
    for pref in (dpo, orpo, kto):
        assert pref.memory_gib == twice.memory_gib
    # Every method has its cost (a reinforcement step's sampling counts as one more pass per token).
    assert set(TRAINER_COST) == set(METHODS)
    grpo = _estimate(LLAMA_8B, "h100-80gb", batch=2, seq=2048, trainer="grpo")
    assert grpo.gpu_seconds == pytest.approx(sft.gpu_seconds * 2, rel=1e-3)
    with pytest.raises(ValueError, match="unknown trainer"):
        _estimate(LLAMA_8B, "h100-80gb", trainer="ppo")
    # QLoRA holds its base in NF4 whatever the compute precision asked for.
    assert _estimate(LLAMA_8B, "t4", adapter="qlora", precision="fp16").precision == "nf4"
    assert _estimate(LLAMA_8B, "a10g", precision="fp16").precision == "fp16"


def test_dry_run_follows_the_adapter_precision_and_trainer(tiny_server_factory):
    # The trainer runs on an A10G (the dry run resolves against the trainer's hardware, as the scheduler does).
    srv = tiny_server_factory(max_concurrent_runs=0, gpu_type="a10g", trainer_device="cuda")
    chat = srv.client.files.create(file=("t.jsonl", chat_lines(30)), purpose="fine-tune")
    pairs = srv.client.files.create(file=("p.jsonl", preference_lines(20)), purpose="fine-tune")
    for f in (chat, pairs):
        srv.client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=30)
    hp = {"n_epochs": 1, "batch_size": 4}

    def dry(**body) -> dict:
        r = srv.http.post("/v1/fine_tuning/jobs/dry_run", json={"model": TINY, "hyperparameters": hp, **body})
        assert r.status_code == 200, r.text
        return r.json()

    lora = dry(training_file=chat.id)
    assert (lora["adapter"], lora["precision"], lora["trainer"]) == ("lora", "bf16", "supervised")
    full = dry(training_file=chat.id, tunery={"training": {"adapter": "full"}})
    assert full["trainable_params"] == full["params"] > lora["trainable_params"]
    assert full["memory_gib"]["trainable_and_optimizer"] > lora["memory_gib"]["trainable_and_optimizer"]
    qlora = dry(training_file=chat.id, tunery={"training": {"adapter": "qlora"}})
    assert qlora["precision"] == "nf4" and qlora["memory_gib"]["weights"] < lora["memory_gib"]["weights"]
    r8 = dry(training_file=chat.id, tunery={"training": {"lora": {"r": 8}}})
    assert r8["trainable_params"] * 2 == lora["trainable_params"]
    fp16 = dry(training_file=chat.id, tunery={"training": {"precision": "fp16"}})
    assert fp16["precision"] == "fp16"

    dpo_method = {"type": "dpo", "dpo": {"hyperparameters": hp}}
    dpo = dry(training_file=pairs.id, method=dpo_method)
    report = srv.http.get(f"/v1/files/{pairs.id}/validation").json()
    assert dpo["trainer"] == "dpo" and dpo["tokens_per_epoch"] == report["tokens"]["total_within_max_seq_length"]
    rule = dpo["params"] * dpo["tokens_per_epoch"] * 1 * (8 / 3) / (5e11 * 70.0)
    assert dpo["gpu_seconds"] == pytest.approx(rule, abs=0.1)
    kto = dry(training_file=pairs.id, method=dpo_method, tunery={"method": {"trainer": "kto"}})
    assert kto["trainer"] == "kto" and kto["compute_factor"] == 4.0
    # A chat file can't train a dpo job, in the dry run as in the job.
    wrong = srv.http.post(
        "/v1/fine_tuning/jobs/dry_run", json={"model": TINY, "training_file": chat.id, "method": dpo_method}
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_training_file"


def test_dry_run_reports_tokens_steps_and_estimates(tiny_server_factory):
    srv = tiny_server_factory(max_concurrent_runs=0, gpu_type="a10g")
    f = srv.client.files.create(file=("t.jsonl", chat_lines(30)), purpose="fine-tune")
    srv.client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=30)
    body = {"model": TINY, "training_file": f.id, "hyperparameters": {"n_epochs": 2, "batch_size": 4}}
    r = srv.http.post("/v1/fine_tuning/jobs/dry_run", json=body)
    assert r.status_code == 200, r.text
    est = r.json()
    report = srv.http.get(f"/v1/files/{f.id}/validation").json()
    assert est["object"] == "fine_tuning.job.estimate" and est["gpu_type"] == "a10g"
    assert est["examples"] == 30 and est["tokens_per_epoch"] == report["tokens"]["total_within_max_seq_length"]
    assert est["steps"] == math.ceil(30 / 4) * 2 and est["hyperparameters"]["n_epochs"] == 2
    assert est["gpu_seconds"] == pytest.approx(est["params"] * est["tokens_per_epoch"] * 2 / (5e11 * 70.0), abs=0.1)
    assert est["fits"] is True and est["estimated_finish"] >= srv.client.files.retrieve(f.id).created_at
    # Nothing was created.
    assert srv.client.fine_tuning.jobs.list().data == []

    # The real job gets an estimated finish once its files are validated.
    job = srv.client.fine_tuning.jobs.create(**body)
    queued = srv.wait_job(job.id, {"queued"}, timeout=30)
    assert queued.estimated_finish is not None and queued.estimated_finish >= queued.created_at

    bad = srv.http.post("/v1/fine_tuning/jobs/dry_run", json={**body, "model": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
    missing = srv.http.post("/v1/fine_tuning/jobs/dry_run", json={**body, "training_file": "file-nope"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "invalid_file_id"
    small = srv.client.files.create(file=("s.jsonl", chat_lines(3)), purpose="fine-tune")
    srv.client.files.wait_for_processing(small.id, poll_interval=0.1, max_wait_seconds=30)
    few = srv.http.post("/v1/fine_tuning/jobs/dry_run", json={**body, "training_file": small.id})
    assert few.status_code == 400 and few.json()["error"]["code"] == "invalid_n_examples"


def test_dry_run_and_the_scheduler_resolve_the_same_plan(tiny_server_factory):
    """Same inputs, same answer: ``auto`` hyperparameters (the batch size a multiple of the micro-batches), the
    precision of the trainer's hardware; and a dry run on an ``ft:`` model is one on its base model."""
    from tests.serving_fixtures import register_model

    srv = tiny_server_factory(max_concurrent_runs=0, gpu_type="a10g")
    f = srv.client.files.create(file=("t.jsonl", chat_lines(40)), purpose="fine-tune")
    srv.client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=30)
    register_model(srv, "ft:tiny-llama:personal::parent1", "jobs/ftjob-parent1/model/", {})
    for model in (TINY, "ft:tiny-llama:personal::parent1"):
        body = {"model": model, "training_file": f.id, "tunery": {"training": {"gradient_accumulation_steps": 2}}}
        r = srv.http.post("/v1/fine_tuning/jobs/dry_run", json=body)
        assert r.status_code == 200, r.text
        est = r.json()
        job = srv.client.fine_tuning.jobs.create(model=model, training_file=f.id, extra_body={"tunery": body["tunery"]})
        queued = srv.wait_job(job.id, {"queued"}, timeout=30)
        assert est["hyperparameters"] == queued.hyperparameters.model_dump()
        assert est["precision"] == queued.model_extra["tunery"]["training"]["precision"] == "fp32"  # a CPU trainer
        assert est["batch_size"] == queued.hyperparameters.batch_size and est["batch_size"] % 2 == 0
        # Gradient checkpointing, decided alike: off where the run fits without it (a tiny model on the CPU).
        assert est["gradient_checkpointing"] is queued.model_extra["tunery"]["training"]["gradient_checkpointing"]
        assert est["gradient_checkpointing"] is False
    # A token budget resolves the auto batch size alike, from the file's mean example: a step is still examples.
    tokens = srv.http.get(f"/v1/files/{f.id}/validation").json()["tokens"]
    per_example = tokens["total_within_max_seq_length"] / 40
    budgeted = {"model": TINY, "training_file": f.id, "tunery": {"training": {"batch_tokens": 1024}}}
    est = srv.http.post("/v1/fine_tuning/jobs/dry_run", json=budgeted).json()
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id, extra_body={"tunery": budgeted["tunery"]})
    queued = srv.wait_job(job.id, {"queued"}, timeout=30)
    assert est["batch_size"] == queued.hyperparameters.batch_size == min(40, round(1024 / per_example)) > 8
    assert queued.model_extra["tunery"]["training"]["batch_tokens"] == 1024
    both = {**budgeted, "hyperparameters": {"batch_size": 4}}
    refused = srv.http.post("/v1/fine_tuning/jobs/dry_run", json=both)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tunery.training.batch_tokens"
    # As asked, when asked; and only a bool or "auto".
    forced = {"model": TINY, "training_file": f.id, "tunery": {"training": {"gradient_checkpointing": True}}}
    assert srv.http.post("/v1/fine_tuning/jobs/dry_run", json=forced).json()["gradient_checkpointing"] is True
    job = srv.client.fine_tuning.jobs.create(model=TINY, training_file=f.id, extra_body={"tunery": forced["tunery"]})
    assert job.model_extra["tunery"]["training"]["gradient_checkpointing"] is True
    assert srv.wait_job(job.id, {"queued"}, timeout=30).model_extra["tunery"]["training"]["gradient_checkpointing"]
    bad = srv.http.post(
        "/v1/fine_tuning/jobs/dry_run", json={**forced, "tunery": {"training": {"gradient_checkpointing": "often"}}}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tunery.training.gradient_checkpointing"


def test_the_dry_run_fits_from_the_peak_a_run_of_the_same_shape_measured(tiny_server_factory):
    """Once a job of the project has trained a plan of the same memory signature on the base model, the dry run
    reports that run's measured peak (its last metrics event's ``peak_memory_gib``) and ``fits`` checks it; a plan
    of another shape has none."""
    srv = tiny_server_factory(gpu_type="cpu")
    f = srv.client.files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune")
    srv.client.files.wait_for_processing(f.id, poll_interval=0.1, max_wait_seconds=30)
    body = {"model": TINY, "training_file": f.id, "hyperparameters": {"n_epochs": 1, "batch_size": 4}}

    def dry_run(**extra: object) -> dict[str, object]:
        r = srv.http.post("/v1/fine_tuning/jobs/dry_run", json={**body, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    before = dry_run()
    assert before["measured"] is None and before["fits_from"] == "estimate"
    job = srv.client.fine_tuning.jobs.create(**body)
    assert srv.wait_job(job.id, {"succeeded", "failed"}, timeout=180).status == "succeeded"
    events = srv.client.fine_tuning.jobs.list_events(job.id, limit=100).data
    peak = next(e.data["peak_memory_gib"] for e in events if e.type == "metrics")  # newest first: the run's peak
    after = dry_run()
    assert after["measured"] == {"peak_memory_gib": round(peak, 3), "job": job.id}
    assert after["fits_from"] == "measured" and after["fits"] is (peak <= 0.95 * after["gpu_memory_gib"])
    assert after["memory_gib"] == before["memory_gib"]  # the estimate's own figures stay beside it
    longer = dry_run(tunery={"training": {"max_seq_length": 2 * after["max_seq_length"]}})
    assert longer["measured"] is None and longer["fits_from"] == "estimate"


def test_a_judge_adds_its_reading_and_scoring_of_every_sampled_answer():
    """A score_model grader's judge: params x answers x (read / 3 + written) / (5e11 x TFLOPs), and its weights (never
    NF4) plus a batch's KV cache and logits in memory."""
    from tunery.graders import parse_grader
    from tunery.plan import LoraPlan, ReinforcementPlan, TrainingPlan

    grader = {
        "type": "score_model",
        "name": "judge",
        "model": "llama-8b",
        "input": [{"role": "user", "content": "x" * 400 + "{{sample.output_text}}"}],
        "sampling_params": {"max_completions_tokens": 32},
    }
    [load] = judge_loads(parse_grader(grader), {"llama-8b": LLAMA_8B})
    assert load.reply_tokens == 32 and load.prompt_tokens == 420 // 4 + 8 * 2
    assert judge_loads(parse_grader(grader), {}) == []  # a judge without a shape is not counted
    rl = ReinforcementPlan(grader=grader, num_generations=4, max_completion_length=64, kl_coef=0.0, temperature=1.0)
    plan = TrainingPlan(
        n_epochs=2,
        batch_size=8,
        learning_rate=1e-4,
        max_seq_length=512,
        lora=LoraPlan(r=16, alpha=32),
        reinforcement=rl,
    ).model_copy(update={"method": "grpo", "adapter": "qlora"})
    args = {"examples": 100, "tokens_per_epoch": 20_000, "trained_tokens_per_epoch": 20_000, "gpu_type": "h100-80gb"}
    alone = estimate_plan(LLAMA_8B, plan, **args)
    judged = estimate_plan(LLAMA_8B, plan, **args, judges=[load])
    answers = 100 // 8 * 8 * 2 * 4  # whole batches of prompts, 2 epochs, 4 answers each
    read = load.prompt_tokens + 64
    expected = LLAMA_8B.params * answers * (read / 3 + 32) / (FLOPS_DIVISOR * GPU_TYPES["h100-80gb"][0])
    assert judged.judge_gpu_seconds == pytest.approx(expected, abs=0.1) and judged.judge_params == LLAMA_8B.params
    assert judged.gpu_seconds == pytest.approx(alone.gpu_seconds + expected, abs=0.2)
    # Its weights in bf16 (a QLoRA run's judge is not quantized), its KV cache and logits for one batch.
    kv = JUDGE_BATCH * (read + 32) * LLAMA_8B.hidden * LLAMA_8B.layers * 2 * 2 + JUDGE_BATCH * LLAMA_8B.vocab * 4
    assert judged.memory_gib["judge"] == pytest.approx((LLAMA_8B.params * 2 + kv) / (1 << 30), abs=1e-3)
    assert judged.memory_gib["total"] == pytest.approx(alone.memory_gib["total"] + judged.memory_gib["judge"], abs=2e-3)
    assert "judge" not in alone.memory_gib
    assert judged.memory_gib["total_with_gradient_checkpointing"] == pytest.approx(
        alone.memory_gib["total_with_gradient_checkpointing"] + judged.memory_gib["judge"], abs=2e-3
    )
    assert not estimate_plan(
        LLAMA_8B, plan, **{**args, "gpu_type": "t4"}, judges=[load]
    ).fits_with_gradient_checkpointing
    assert JudgeLoad(LLAMA_8B, 1, 1).shape is LLAMA_8B


def test_vllm_sampling_adds_its_weights_and_kv_cache_where_it_runs():
    """Where vLLM samples a reinforcement run's answers (``auto`` on a GPU, ``vllm`` anywhere), it holds a copy of the
    weights in the run's precision and the KV cache of a step's completions at once, beside the trainer."""
    assert uses_vllm("auto", gpu=True) and not uses_vllm("auto", gpu=True, installed=False)
    assert not uses_vllm("auto", gpu=False) and uses_vllm("vllm", gpu=False) and not uses_vllm("transformers", gpu=True)
    rl = ReinforcementPlan(
        grader={"type": "string_check"}, num_generations=8, max_completion_length=256, kl_coef=0.0, temperature=1.0
    )
    plan = TrainingPlan(
        n_epochs=1,
        batch_size=4,
        learning_rate=1e-4,
        max_seq_length=768,
        lora=LoraPlan(r=16, alpha=32),
        reinforcement=rl,
    ).model_copy(update={"method": "grpo"})
    args = {"examples": 64, "tokens_per_epoch": 20_000, "trained_tokens_per_epoch": 20_000, "gpu_type": "h100-80gb"}
    alone = estimate_plan(LLAMA_8B, plan, **args)
    sampled = estimate_plan(LLAMA_8B, plan, **args, generation="auto")
    kv_cache = 4 * 8 * (768 + 256) * 32 * 2 * 1024 * 2  # 32 sequences of 1,024 tokens, bf16 keys and values
    held = LLAMA_8B.params * 2 + kv_cache + SAMPLER_WORKING
    assert sampled.memory_gib["sampler"] == pytest.approx(held / (1 << 30), abs=1e-3)
    assert sampled.memory_gib["total"] == pytest.approx(alone.memory_gib["total"] + held / (1 << 30), abs=2e-3)
    assert "sampler" not in alone.memory_gib
    assert "sampler" not in estimate_plan(LLAMA_8B, plan, **args, generation="transformers").memory_gib
    # On the CPU only where asked for; QLoRA's copy is vLLM's 4-bit one, its KV cache still bf16.
    assert "sampler" not in estimate_plan(LLAMA_8B, plan, **{**args, "gpu_type": "cpu"}, generation="auto").memory_gib
    qlora = estimate_plan(LLAMA_8B, plan.model_copy(update={"adapter": "qlora"}), **args, generation="vllm")
    assert qlora.memory_gib["sampler"] == pytest.approx(
        (LLAMA_8B.params * 0.55 + kv_cache + SAMPLER_WORKING) / (1 << 30), abs=1e-3
    )
    # The copy can be what tips a run over the memory: on a 16 GiB GPU, 4 answers to a prompt a step fit without it.
    small = plan.model_copy(
        update={"adapter": "qlora", "batch_size": 1, "reinforcement": rl.model_copy(update={"num_generations": 4})}
    )
    assert estimate_plan(LLAMA_8B, small, **{**args, "gpu_type": "t4"}).fits_with_gradient_checkpointing
    assert not estimate_plan(
        LLAMA_8B, small, **{**args, "gpu_type": "t4"}, generation="auto"
    ).fits_with_gradient_checkpointing
