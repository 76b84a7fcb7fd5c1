"""Who samples a reinforcement run's answers (trainer/generation.py), and TRL's config where vLLM does. vLLM itself
sampling a run's answers: tests/trainer/test_grpo_vllm.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from trainer.config import trl_config
from trainer.errors import TrainerError
from trainer.generation import SAMPLER_WORKING, gpu_share, raised_in_vllm, resolve_generation, vllm_start_failure
from trainer.loading import resolve_device
from trainer.methods import get_method
from tunery.estimate import model_shape, sampler_memory
from tunery.plan import LoraPlan, ReinforcementPlan, TrainingPlan

GRADER = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"}
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_transformers_samples_unless_vllm_is_asked_for_or_on_a_gpu_that_has_it() -> None:
    assert resolve_generation("transformers", "cuda") == "transformers"
    assert resolve_generation("auto", "cpu") == "transformers"  # short CPU runs lose to vLLM's start
    assert resolve_generation("auto", "cuda") == ("vllm" if HAS_VLLM else "transformers")


@pytest.mark.skipif(HAS_VLLM, reason="this environment has vLLM")
def test_vllm_asked_for_where_the_trainer_lacks_it_is_an_error_before_loading() -> None:
    with pytest.raises(TrainerError) as e:
        resolve_generation("vllm", "cpu")
    assert e.value.code == "unsupported_hardware" and "TUNERY_TRAINER_GENERATION=vllm" in e.value.message


def test_vllms_share_of_a_gpu_is_the_estimates_figure_rounded_up() -> None:
    gib = 1 << 30
    assert gpu_share(10 * gib, 80 * gib) == 0.15  # 12.5%, rounded up to a step of 5%
    assert gpu_share(12 * gib, 80 * gib) == 0.15  # exactly a step
    assert gpu_share(1 * gib, 80 * gib) == 0.1  # never below 10%: vLLM needs room to profile
    assert gpu_share(79 * gib, 80 * gib) == 0.9  # never the whole GPU: the trainer is beside it


def test_trls_config_where_vllm_samples(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GRPO's TRL config asks for vLLM in colocate mode, its context the longest prompt plus the longest answer; on
    the CPU its KV cache is the estimate's figure in whole GiB, and vLLM leaves the trainer's threads alone."""
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    rl = ReinforcementPlan(grader=GRADER, num_generations=64, max_completion_length=512, kl_coef=0.0, temperature=1.0)
    plan = TrainingPlan(
        n_epochs=1, batch_size=8, learning_rate=1e-4, max_seq_length=1024, lora=LoraPlan(r=8, alpha=16)
    ).model_copy(update={"method": "grpo", "reinforcement": rl, "packing": False})
    choice = resolve_device("cpu")
    choice.generation = "vllm"
    args = trl_config(
        get_method("grpo"), plan, seed=1, output_dir=str(tmp_path), choice=choice, model_path=str(tiny_model_dir)
    )
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_max_model_length == 1024 + 512
    assert not args.vllm_enable_sleep_mode
    held = sampler_memory(model_shape(tiny_model_dir), "fp32", 8 * 64, 1024 + 512)
    kv_cache = held - model_shape(tiny_model_dir).params * 4 - SAMPLER_WORKING
    assert int(os.environ["VLLM_CPU_KVCACHE_SPACE"]) == max(1, -(-int(kv_cache) // (1 << 30)))
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    # vLLM's rendezvous port is one the kernel handed out, not TRL's first candidate that is free (29500, ...): two
    # trainers starting at once on one machine both took 29500, and the second failed to bind it (EADDRINUSE).
    port = int(os.environ["MASTER_PORT"])
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert low <= port <= high
    monkeypatch.setenv("MASTER_PORT", "41234")  # one the environment names is kept (torchrun's, on a cluster)
    trl_config(
        get_method("grpo"), plan, seed=1, output_dir=str(tmp_path), choice=choice, model_path=str(tiny_model_dir)
    )
    assert os.environ["MASTER_PORT"] == "41234"
    # Where transformers samples, TRL's config has no vLLM.
    choice.generation = "transformers"
    plain = trl_config(get_method("grpo"), plan, seed=1, output_dir=str(tmp_path), choice=choice)
    assert not plain.use_vllm


@pytest.mark.skipif(HAS_VLLM, reason="this environment has vLLM: TRL's vLLM generation starts")
def test_vllm_failing_to_start_is_told_apart_from_the_trainers_own_errors() -> None:
    """TRL's vLLM generation raising as it starts vLLM (here: vLLM is not installed) is vLLM's failure: under
    ``auto`` a warning (the run samples with generate), under ``vllm`` the run's error; an error raised elsewhere is
    not, whatever folder its file is in (a trainer image's environment under /opt/vllm/, say)."""
    from trl.generation.vllm_generation import VLLMGeneration

    bare = object.__new__(VLLMGeneration)
    bare.model = bare.accelerator = None
    with pytest.raises(ImportError) as started:
        VLLMGeneration._init_vllm(bare)
    assert raised_in_vllm(started.value)
    warning = vllm_start_failure(started.value, "auto")
    assert warning is not None and warning.startswith("vLLM could not start to sample this run's answers (ImportError")
    assert warning.endswith("transformers' generate samples them instead, more slowly")
    with pytest.raises(TrainerError) as ended:
        vllm_start_failure(started.value, "vllm")
    assert ended.value.code == "unsupported_hardware" and "TUNERY_TRAINER_GENERATION=vllm" in ended.value.message

    code = compile("raise ValueError('max_length is too long')", "/opt/vllm/lib/trl/trainer/grpo_trainer.py", "exec")
    with pytest.raises(ValueError) as refused:
        exec(code, {"__name__": "trl.trainer.grpo_trainer"})
    assert not raised_in_vllm(refused.value)
    assert vllm_start_failure(refused.value, "vllm") is None
