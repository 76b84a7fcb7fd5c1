"""Fixtures and helpers of the serving tests (imported by the test module, not a conftest): LoRA adapters
of the tiny model in an object store, and a reference generation (a lone PeftModel with ``generate``) to
compare the engine against. The models themselves come from conftest (``tiny_model_dir``, ``demo_model_dir``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunery.storage import LocalObjectStore

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Two fine-tuned models of the tiny base: a final model and a checkpoint, as the trainer stores them.
ADAPTERS = {
    "ft:tiny-llama:personal:one:AbCd1234": ("jobs/ftjob-one/model/", 1),
    "ft:tiny-llama:personal:two:EfGh5678:ckpt-step-2": ("jobs/ftjob-two/checkpoints/step-2/", 2),
}


def make_adapter(base_dir: Path, out: Path, seed: int, r: int = 8) -> Path:
    """A LoRA adapter with random (nonzero) A and B, so it visibly changes the base model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=ALL_LINEAR, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out))
    return out


@dataclass
class Adapters:
    store: LocalObjectStore
    dirs: dict[str, Path]  # adapter name -> the folder it was saved to (for reference models)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Adapters:
    """An object store holding the adapters of ADAPTERS (each with a pickle the engine must not copy)."""
    root = tmp_path_factory.mktemp("serving-store")
    store = LocalObjectStore(root / "objects")
    dirs = {}
    for i, (name, (prefix, seed)) in enumerate(ADAPTERS.items()):
        folder = make_adapter(tiny_model_dir, root / f"adapter-{i}", seed)
        store.put_dir(prefix, folder)
        store.put_bytes(prefix + "optimizer.pt", b"not a real pickle")
        dirs[name] = folder
    return Adapters(store=store, dirs=dirs)


def reference_greedy(base_dir: Path, adapter_dir: Path | None, messages: list[dict], max_new_tokens: int) -> str:
    """Greedy text from a freshly loaded model (with one PeftModel adapter, or none), via ``generate``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    encoded: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt = encoded["input_ids"]
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def register_model(
    srv: Any, model_id: str, prefix: str, files: dict[str, bytes], base_model: str = "tiny-llama"
) -> None:
    """A fine-tuned model as a finished job leaves it: ``files`` under ``prefix`` of a running server's store (none:
    they are there already) and its row in the server's metadata store."""
    from tunery.db import FineTunedModel
    from tunery.db.ops import now

    ctx = srv.app.state.ctx
    for name, data in files.items():
        ctx.store.put_bytes(prefix + name, data)
    with ctx.db.session() as s:
        s.add(
            FineTunedModel(
                id=model_id,
                kind="fine_tuned",
                base_model=base_model,
                job_id=prefix.split("/")[1],
                object_prefix=prefix,
                owned_by=ctx.settings.organization_id,
                organization_id=ctx.settings.organization_id,
                project_id=ctx.settings.project_id,
                created_at=now(),
            )
        )
