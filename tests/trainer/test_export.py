"""Model export (trainer/export.py): the merged safetensors folder computes what base + adapter computed, and the
GGUF written from it loads back through transformers' GGUF reader with the same logits and the same tokenization.

Everything is real (transformers, PEFT, gguf) on the tiny random Llama, whose tokenizer is SmolLM2's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trainer.checkpoint import save_adapter_folder, save_full_model_folder
from trainer.export import ExportError, UnsupportedArchitecture, merge_model, write_gguf

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXTS = [
    "Hello there! How's it going?",
    "Numbers 12345 and 3.14, émojis 🦙, and\n\nnew lines",
    "def f(x):\n    return x * 2",
]
CONVERSATION = [
    {"role": "user", "content": "What's 2 + 2?  Answer in words, please 🙂"},
    {"role": "assistant", "content": "Four.\n\nAnything else?"},
    {"role": "user", "content": "No thanks"},
]


@dataclass
class Exported:
    base: Path
    adapter: Path
    merged: Path


def _load(folder: Path, **kwargs: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs).eval()


def _logits(model: Any, tokenizer: Any) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([tokenizer.encode(text)])).logits[0] for text in TEXTS]


def _max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Exported:
    """A LoRA adapter of the tiny model with random nonzero A and B, saved as the trainer saves a checkpoint
    (public base name in adapter_config.json, tokenizer and chat template beside it), and its merge."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEAR, init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(_load(tiny_model_dir), config)  # B is random too (PEFT's default is zero)
    adapter = root / "checkpoint"
    adapter.mkdir()
    save_adapter_folder(peft_model, AutoTokenizer.from_pretrained(str(tiny_model_dir)), adapter, "tiny-llama")
    merged = merge_model(tiny_model_dir, adapter, root / "merged")
    return Exported(base=tiny_model_dir, adapter=adapter, merged=merged)


def test_merged_model_computes_base_plus_adapter(exported: Exported) -> None:
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(exported.merged))
    merged = _logits(_load(exported.merged), tokenizer)
    with_adapter = _logits(PeftModel.from_pretrained(_load(exported.base), str(exported.adapter)).eval(), tokenizer)
    base = _logits(_load(exported.base), tokenizer)
    assert _max_diff(merged, with_adapter) < 1e-5
    assert _max_diff(merged, base) > 1e-2  # the adapter really is in the weights

    names = {p.name for p in exported.merged.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert json.loads((exported.merged / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(str(exported.base)).chat_template
    # Written beside and renamed: no temporary sibling is left.
    assert [p.name for p in exported.merged.parent.iterdir() if p.name.startswith(".")] == []


def test_full_fine_tune_checkpoint_exports(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = _load(tiny_model_dir)
    torch.manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save_full_model_folder(model, tokenizer, checkpoint)

    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("a previous export")  # replaced whole, not merged into
    merged = merge_model(tiny_model_dir, checkpoint, out)
    assert _max_diff(_logits(_load(merged), tokenizer), _logits(model, tokenizer)) < 1e-6
    assert not (out / "stale.txt").exists()


def test_broken_checkpoint_leaves_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    adapter = tmp_path / "checkpoint"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")  # no weights: not a usable adapter
    with pytest.raises(ExportError, match=r"adapter_model\.safetensors"):
        merge_model(tiny_model_dir, adapter, tmp_path / "out")
    with pytest.raises(ExportError, match="neither a LoRA adapter"):
        merge_model(tiny_model_dir, tmp_path, tmp_path / "out")
    with pytest.raises(ExportError, match="unknown dtype"):
        merge_model(tiny_model_dir, adapter, tmp_path / "out", dtype="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.fixture(scope="module")
def gguf_f32(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    path = write_gguf(exported.merged, folder / "model.gguf", "f32")
    assert [p.name for p in folder.iterdir()] == [path.name]  # written beside and renamed: no temporary left
    return path


def test_gguf_loads_back_with_the_same_logits_and_tokens(exported: Exported, gguf_f32: Path) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(exported.merged))
    loaded = AutoTokenizer.from_pretrained(str(gguf_f32.parent), gguf_file=gguf_f32.name)
    want = reference.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True)["input_ids"]
    got = loaded.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert got == want
    for text in TEXTS:
        assert loaded.encode(text) == reference.encode(text)
    assert loaded.decode(want) == reference.decode(want)

    from_gguf = _logits(_load(gguf_f32.parent, gguf_file=gguf_f32.name), reference)
    assert _max_diff(from_gguf, _logits(_load(exported.merged), reference)) < 1e-5


@pytest.mark.parametrize(("outtype", "tolerance"), [("f16", 5e-3), ("q8_0", 5e-2)])
def test_gguf_lower_precisions_stay_close(exported: Exported, tmp_path: Path, outtype: str, tolerance: float) -> None:
    from transformers import AutoTokenizer

    path = write_gguf(exported.merged, tmp_path / f"model-{outtype}.gguf", outtype)
    tokenizer = AutoTokenizer.from_pretrained(str(exported.merged))
    diff = _max_diff(
        _logits(_load(tmp_path, gguf_file=path.name), tokenizer), _logits(_load(exported.merged), tokenizer)
    )
    assert 0 < diff < tolerance


def test_gguf_metadata(exported: Exported, gguf_f32: Path) -> None:
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    reader = gguf.GGUFReader(gguf_f32)

    def field(key: str) -> Any:
        return reader.fields[key].contents()

    config = json.loads((exported.merged / "config.json").read_text())
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == config["num_hidden_layers"] == 2
    assert field("llama.context_length") == config["max_position_embeddings"]
    assert field("llama.embedding_length") == config["hidden_size"]
    assert field("llama.feed_forward_length") == config["intermediate_size"]
    assert field("llama.attention.head_count") == config["num_attention_heads"]
    assert field("llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field("llama.rope.dimension_count") == config["head_dim"]
    assert field("llama.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert field("general.file_type") == gguf.LlamaFileType.ALL_F32
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "smollm"  # llama.cpp's name for SmolLM's pre-tokenizer
    assert field("tokenizer.chat_template") == (exported.merged / "chat_template.jinja").read_text()
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert field("tokenizer.ggml.padding_token_id") == 2
    assert not field("tokenizer.ggml.add_bos_token")  # SmolLM2's tokenizer adds none; the template writes it
    assert len(field("tokenizer.ggml.tokens")) == config["vocab_size"]
    assert len(field("tokenizer.ggml.merges")) > 40_000

    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd.weight
    assert len(tensors) == 1 + 1 + 9 * config["num_hidden_layers"]  # embeddings, final norm, 9 per block
    # The Q rows are stored permuted for llama.cpp's rope (and only Q/K are).
    hf = load_file(str(exported.merged / "model.safetensors"))
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    stored_q = np.asarray(tensors["blk.0.attn_q.weight"].data).reshape(q.shape)
    assert not np.array_equal(stored_q, q) and np.array_equal(np.sort(stored_q, axis=0), np.sort(q, axis=0))
    v = hf["model.layers.0.self_attn.v_proj.weight"]
    assert np.array_equal(np.asarray(tensors["blk.0.attn_v.weight"].data).reshape(v.shape), v)


def test_other_architectures_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    folder = tmp_path / "qwen2"
    Qwen2ForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    with pytest.raises(UnsupportedArchitecture, match="LlamaForCausalLM only") as caught:
        write_gguf(folder, tmp_path / "model.gguf")
    assert caught.value.code == "unsupported_architecture"
    assert not (tmp_path / "model.gguf").exists()

    with pytest.raises(ExportError, match="unknown GGUF type"):
        write_gguf(tiny_model_dir, tmp_path / "model.gguf", "q4_k")


@pytest.mark.slow
def test_demo_model_gguf_generates_the_same(demo_model_dir: Path, tmp_path: Path) -> None:
    """SmolLM2-135M in f16 (~4 s to write, 271 MB): same prompt tokens, same greedy answer as the safetensors."""
    import torch
    from transformers import AutoTokenizer

    path = write_gguf(demo_model_dir, tmp_path / "smollm2.gguf", "f16")
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    from_gguf = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert from_gguf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"] == prompt

    ids = torch.tensor([prompt])
    with torch.no_grad():
        want = _load(demo_model_dir).generate(ids, max_new_tokens=12, do_sample=False)
        got = _load(tmp_path, gguf_file=path.name).generate(ids, max_new_tokens=12, do_sample=False)
    assert got.tolist() == want.tolist()
