"""Taking a fine-tuned model home: the adapter merged into its base as a plain safetensors folder, and GGUF.

Two steps, each usable alone:

* :func:`merge_model` turns a checkpoint (a LoRA/QLoRA adapter, or a full fine-tune) into an ordinary Hugging Face
  folder (``config.json``, ``model.safetensors``, tokenizer files, chat template) that any ``from_pretrained`` loads
  without PEFT.
* :func:`write_gguf` converts such a folder (Llama architecture only) to one GGUF file for llama.cpp and Ollama,
  following the conventions of llama.cpp's ``convert_hf_to_gguf.py``: its tensor names, its Q/K row permutation,
  its metadata keys, and its byte-level BPE tokenizer layout.

Both write into a temporary sibling and rename at the end, so a crash never leaves a half-written output where a
caller (or a later download) would take it for a finished one. Failures a user can act on raise :class:`ExportError`
(a :class:`~trainer.errors.TrainerError`, so a job turns it into an error code and one-line message).

    python -m trainer.export merge --base DIR --checkpoint DIR --out DIR
    python -m trainer.export gguf --model DIR --out FILE.gguf [--outtype f16]

The server runs both as a job of kind ``export`` (trainer/export_task.py, docs/exports.md); ``tunery models export``
runs them on the client.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from tunery.exports import EXPORT_DTYPES, GGUF_TYPES, gguf_refusal

from .checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, save_full_model_folder
from .errors import TrainerError
from .loading import DeviceChoice, load_base_model
from .models import publish_folder

MERGE_DTYPES = EXPORT_DTYPES
GGUF_OUTTYPES = GGUF_TYPES


class ExportError(TrainerError):
    """An export that cannot be done as asked (a broken checkpoint, an adapter that does not fit its base)."""

    code = "export_error"


class UnsupportedArchitecture(ExportError):
    """The model (or its tokenizer) is of a kind the GGUF writer does not convert. It refuses rather than guesses:
    a GGUF with wrong tensor layout or tokenizer loads fine in llama.cpp and then produces garbage."""

    code = "unsupported_architecture"


# ---------------------------------------------------------------------------------------------------------------
# Merging


def merge_model(base_dir: Path, checkpoint_dir: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """Write ``checkpoint_dir`` as a standalone Hugging Face model folder at ``out_dir`` and return it.

    * A PEFT adapter (``adapter_config.json``): the base model is loaded from ``base_dir``, the adapter applied
      with PEFT and folded into the weights (``merge_and_unload``). A QLoRA adapter is merged into the base loaded
      *unquantized* (in ``dtype``), the standard practice: its LoRA weights were trained against the de-quantized
      NF4 weights, which the original weights approximate, and merging into 4-bit weights would either need
      re-quantization or not be possible at all.
    * A full fine-tune (``config.json`` + safetensors, no adapter): loaded and re-saved, so every export has the
      same shape whatever the training method (``base_dir`` is not read).

    The tokenizer and chat template come from the checkpoint (the trainer saves them with every checkpoint), or
    from the base when the checkpoint has none. ``dtype`` is the precision of the merge and of the written
    weights; float32 (the default) merges exactly, a GGUF export picks its own precision afterwards.
    Only safetensors are read: a checkpoint's pickles (if any) are never loaded.
    """
    torch_dtype = _torch_dtype(dtype)
    choice = DeviceChoice(device="cpu", dtype=torch_dtype, bf16=False, precision="fp32", adapter="lora")
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if (checkpoint_dir / ADAPTER_CONFIG).is_file():
        if not (checkpoint_dir / ADAPTER_WEIGHTS).is_file():
            raise ExportError(f"the adapter in {checkpoint_dir} has no {ADAPTER_WEIGHTS}")
        model, tokenizer = load_base_model(str(base_dir), choice)
        model = _merge_adapter(model, checkpoint_dir)
        if _has_tokenizer(checkpoint_dir):
            tokenizer = _load_tokenizer(checkpoint_dir)
    elif (checkpoint_dir / "config.json").is_file():
        model, tokenizer = load_base_model(str(checkpoint_dir), choice)
    else:
        raise ExportError(
            f"{checkpoint_dir} is neither a LoRA adapter ({ADAPTER_CONFIG}) nor a full model (config.json)"
        )
    model.config.dtype = torch_dtype
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        save_full_model_folder(model, tokenizer, tmp)
        publish_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _torch_dtype(name: str) -> Any:
    import torch

    if name not in MERGE_DTYPES:
        raise ExportError(f"unknown dtype {name!r} (expected one of {', '.join(MERGE_DTYPES)})", param="dtype")
    return getattr(torch, name)


def _merge_adapter(model: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or target modules that do not fit this base
        raise ExportError(f"the adapter in {adapter_dir} does not fit the base model: {exc}") from exc
    return peft_model.merge_and_unload()


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token is None:  # as load_base_model does: the merged model is trained with this pad token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# GGUF


@dataclass(frozen=True)
class LlamaParams:
    """The hyperparameters a llama GGUF records, read from a transformers ``config.json``."""

    n_blocks: int
    context_length: int
    embedding_length: int
    feed_forward_length: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_freq_base: float
    rms_eps: float
    vocab_size: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any], where: Path) -> LlamaParams:
        """Refuses what the llama GGUF layout this writer produces cannot express (rather than writing a file
        that loads and then computes something else)."""
        refusal = gguf_refusal(config)
        if refusal is not None:
            raise UnsupportedArchitecture(f"{refusal} ({where})")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(
            n_blocks=int(config["num_hidden_layers"]),
            context_length=int(config["max_position_embeddings"]),
            embedding_length=hidden,
            feed_forward_length=int(config["intermediate_size"]),
            n_heads=heads,
            n_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            rope_freq_base=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            rms_eps=float(config["rms_norm_eps"]),
            vocab_size=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class GgufVocab:
    """A byte-level BPE vocabulary as llama.cpp's ``gpt2`` tokenizer model stores it."""

    tokens: list[str]
    token_types: list[int]
    pre: str  # tokenizer.ggml.pre: which pre-tokenizer (split regex) llama.cpp applies
    add_bos: bool
    add_eos: bool


# llama.cpp identifies a BPE pre-tokenizer by the token ids the HF tokenizer gives this text (convert_hf_to_gguf.py,
# get_vocab_base_pre): the SHA-256 of ``str(tokenizer.encode(_CHKTXT))`` names the split regex its runtime applies.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 "
    "3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天\uff5e ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
    "'D you like some tea? We'Ve a'lL"
)
# The hashes of byte-level BPE tokenizers that come with Llama-architecture models (values from llama.cpp's table).
_KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Smaug-Llama-3
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",  # Falcon3 (Llama)
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",  # DeepSeek LLM (Llama)
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",  # DeepSeek Coder (Llama)
}


def write_gguf(model_dir: Path, out_path: Path, outtype: str = "f16") -> Path:
    """Convert a Llama-architecture safetensors folder (a :func:`merge_model` output) to one GGUF file.

    ``outtype``: ``f32``; ``f16`` (matrices in f16, norms kept f32, as llama.cpp does); ``q8_0`` (matrices in
    Q8_0 where the row length allows, else f16). The layout follows llama.cpp's converter so that llama.cpp, Ollama
    and transformers' GGUF loader all read it: tensor names from ``gguf.TensorNameMap``, the Q and K projections'
    rows permuted the way llama.cpp's rope expects (``LlamaModel.permute``; transformers reverses it on load), no
    ``output.weight`` when the embeddings are tied, and the tokenizer as a ``gpt2`` (byte-level BPE) vocabulary
    with its merges, special token ids and chat template.

    Other architectures, rope scalings and tokenizers (sentencepiece, unknown pre-tokenizers) raise
    :class:`UnsupportedArchitecture`.
    """
    import gguf

    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in GGUF_OUTTYPES:
        raise ExportError(f"unknown GGUF type {outtype!r} (expected one of {', '.join(GGUF_OUTTYPES)})")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{model_dir} has no config.json")
    params = LlamaParams.from_config(json.loads(config_path.read_text()), model_dir)
    vocab = _gguf_vocab(model_dir, params.vocab_size)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_params(writer, params, model_dir.name, outtype)
        _add_vocab(writer, vocab, model_dir)
        for name, data, qtype in _gguf_tensors(model_dir, params, outtype):
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def _add_params(writer: Any, params: LlamaParams, name: str, outtype: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(params.context_length)
    writer.add_embedding_length(params.embedding_length)
    writer.add_block_count(params.n_blocks)
    writer.add_feed_forward_length(params.feed_forward_length)
    writer.add_head_count(params.n_heads)
    writer.add_head_count_kv(params.n_kv_heads)
    writer.add_rope_freq_base(params.rope_freq_base)
    writer.add_layer_norm_rms_eps(params.rms_eps)
    writer.add_rope_dimension_count(params.head_dim)
    if params.head_dim != params.embedding_length // params.n_heads:  # llama.cpp's default is hidden / heads
        writer.add_key_length(params.head_dim)
        writer.add_value_length(params.head_dim)
    writer.add_vocab_size(params.vocab_size)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]
    writer.add_file_type(file_type)
    if outtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _gguf_vocab(model_dir: Path, vocab_size: int) -> GgufVocab:
    """Tokens and their types as llama.cpp's ``get_vocab_base`` lists them (byte-level strings, ``[PAD{i}]`` for
    ids the tokenizer lacks up to the model's vocabulary size), and the flags that make llama.cpp tokenize a
    prompt the way the HF tokenizer does."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise UnsupportedArchitecture(f"GGUF export needs a fast tokenizer (tokenizer.json) in {model_dir}")
    spec = json.loads(tokenizer_json.read_text())
    byte_level = '"ByteLevel"' in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    if (spec.get("model") or {}).get("type") != "BPE" or not byte_level:
        raise UnsupportedArchitecture(
            "GGUF export supports byte-level BPE (GPT-2 style) tokenizers only, not sentencepiece-style ones "
            f"({model_dir})"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    chkhsh = sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    pre = _KNOWN_PRE_TOKENIZERS.get(chkhsh)
    if pre is None:
        raise UnsupportedArchitecture(
            f"GGUF export does not know this tokenizer's pre-tokenizer (llama.cpp hash {chkhsh}); "
            "llama.cpp would split text differently from the model's training"
        )
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise ExportError(f"the tokenizer in {model_dir} has ids beyond the model's vocabulary ({vocab_size})")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            # llama.cpp expects added tokens pre-normalized: for byte-level BPE that is the text they decode to.
            token = by_id[i] if added[i].normalized else str(tokenizer.decode([i]))
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    # Whether the HF tokenizer adds BOS/EOS itself, as observed (llama.cpp's defaults differ per vocabulary).
    plain = tokenizer.encode("a", add_special_tokens=False)
    with_special = tokenizer.encode("a", add_special_tokens=True)
    start = 1 if with_special[:1] == [tokenizer.bos_token_id] and plain[:1] != with_special[:1] else 0
    add_bos = start == 1
    add_eos = with_special[start + len(plain) :] == [tokenizer.eos_token_id]
    return GgufVocab(tokens=tokens, token_types=[int(t) for t in types], pre=pre, add_bos=add_bos, add_eos=add_eos)


def _add_vocab(writer: Any, vocab: GgufVocab, model_dir: Path) -> None:
    import gguf

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_add_space_prefix(False)
    # Merges, bos/eos/unk/pad ids and the chat template (chat_template.jinja or tokenizer_config.json), as
    # llama.cpp's converter reads them.
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(vocab.tokens))
    if not special.merges:
        raise ExportError(f"the tokenizer in {model_dir} has no BPE merges")
    special.add_special_token["bos"] = vocab.add_bos
    special.add_special_token["eos"] = vocab.add_eos
    special.add_to_gguf(writer, quiet=True)


def _gguf_tensors(model_dir: Path, params: LlamaParams, outtype: str) -> Iterator[tuple[str, Any, Any]]:
    """``(gguf name, data, raw GGML type or None)`` of every tensor, in the file's order."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, params.n_blocks)
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir} has no model*.safetensors")
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for hf_name in weights.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                if hf_name.endswith(".rotary_emb.inv_freq"):
                    continue  # recomputed from the rope parameters
                if hf_name == "lm_head.weight" and params.tied_embeddings:
                    continue  # llama.cpp reuses token_embd.weight when there is no output.weight
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise UnsupportedArchitecture(f"GGUF export does not know the tensor {hf_name!r} ({file.name})")
                data = weights.get_tensor(hf_name).float().numpy()
                if hf_name.endswith("q_proj.weight"):
                    data = _permute(data, params.n_heads, params.n_heads)
                elif hf_name.endswith("k_proj.weight"):
                    data = _permute(data, params.n_heads, params.n_kv_heads)
                yield name, *_encode(data, outtype, np, gguf)


def _permute(weights: Any, n_head: int, n_head_kv: int) -> Any:
    """llama.cpp's ``LlamaModel.permute``: HF's rotary embedding rotates the two halves of each head, llama.cpp's
    adjacent pairs, so the rows of Q and K are interleaved per head to match (transformers undoes it on load)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _encode(data: Any, outtype: str, np: Any, gguf: Any) -> tuple[Any, Any]:
    """The stored form of one float32 tensor: vectors (norms) stay f32 whatever the type, as in llama.cpp."""
    if outtype == "f32" or data.ndim < 2:
        return data.astype(np.float32), None
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]
    if outtype == "q8_0" and data.shape[-1] % block == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, qtype), qtype
    return data.astype(np.float16), None


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export")
    sub = parser.add_subparsers(dest="cmd", required=True)
    merge = sub.add_parser("merge", help="merge an adapter (or re-save a full fine-tune) into a safetensors folder")
    merge.add_argument("--base", type=Path, required=True)
    merge.add_argument("--checkpoint", type=Path, required=True)
    merge.add_argument("--out", type=Path, required=True)
    merge.add_argument("--dtype", choices=MERGE_DTYPES, default="float32")
    conv = sub.add_parser("gguf", help="convert a merged Llama folder to GGUF")
    conv.add_argument("--model", type=Path, required=True)
    conv.add_argument("--out", type=Path, required=True)
    conv.add_argument("--outtype", choices=GGUF_OUTTYPES, default="f16")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "merge":
            print(merge_model(args.base, args.checkpoint, args.out, args.dtype))
        else:
            print(write_gguf(args.model, args.out, args.outtype))
    except TrainerError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
