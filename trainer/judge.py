"""The judge of a reinforcement job's ``score_model`` grader, in the trainer: the judge model loaded in-process with
transformers, beside the policy, on the run's device (tunery.graders.Judge; the API's twin asks the serving backend).

The scheduler resolved each judge for the job's project when it launched the run (``JobSpec.judges``): its base
model's folder, and for an ``ft:`` judge the object-store prefix of its files, a LoRA adapter (merged into a copy of
its base model) or a whole model. Only safetensors and JSON/text files are copied; nothing is ever looked up by name.
A step's samples are judged in batches (left-padded); greedy unless the grader's ``temperature`` is above 0, and a
sampler seeded with its ``seed`` (or a seed of the judge's own) inside a forked RNG, so judging never moves the
policy's random state.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from tunery import embeddings
from tunery.graders import JudgeReply, JudgeSampling, Message
from tunery.jobspec import EmbeddingSpec, JobSpec, JudgeSpec
from tunery.methods import GRADER_PARAM
from tunery.storage import ObjectStore

from .errors import TrainerError

log = logging.getLogger("tunery.trainer.judge")

BATCH = 16  # conversations per generate() call
# The files of a fine-tuned judge that are copied: weights as safetensors only, configs, tokenizer, chat template.
_COPIED = (".safetensors", ".json", ".jinja", ".txt", ".model")


class TransformersJudge:
    """Each judge of the spec loaded once (at start, so a bad one fails the job before it trains), answering
    conversations in batches."""

    def __init__(self, judges: dict[str, JudgeSpec], store: ObjectStore, device: str, dtype: Any, workdir: str):
        self.specs = judges
        self.store = store
        self.device = device
        self.dtype = dtype
        self.workdir = Path(workdir) / "judges"
        self._models: dict[str, tuple[Any, Any]] = {}
        self._calls = 0
        for name, spec in judges.items():
            started = time.monotonic()
            self._models[name] = self._load(spec)
            log.info("judge %s loaded on %s in %.1fs", name, device, time.monotonic() - started)

    # -- loading
    def _fetch(self, spec: JudgeSpec) -> Path:
        """The fine-tuned judge's files, copied from the object store (its top level: an adapter, or a whole model)."""
        assert spec.adapter_prefix is not None
        prefix = spec.adapter_prefix.strip("/") + "/"
        folder = self.workdir / hashlib.sha256(prefix.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        for key in self.store.list(prefix):
            name = key[len(prefix) :]
            if "/" not in name and name.endswith(_COPIED):
                self.store.get_file(key, folder / name)
        return folder

    def _load(self, spec: JudgeSpec) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def model_from(folder: Path) -> Any:
            if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
                raise TrainerError(
                    f"the judge model {spec.model} has no safetensors model in {folder}",
                    code="model_not_available",
                    param=f"{GRADER_PARAM}.model",
                )
            return AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=self.dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True
            )

        base = Path(spec.base_model_path)
        tokenizer_folder = base
        if spec.adapter_prefix is None:
            model = model_from(base)
        else:
            local = self._fetch(spec)
            if (local / "adapter_config.json").is_file():
                from peft import PeftModel

                try:
                    model = PeftModel.from_pretrained(model_from(base), str(local), is_trainable=False)
                except (ValueError, RuntimeError, KeyError, OSError) as e:
                    raise TrainerError(
                        f"the judge model {spec.model} cannot be loaded onto {spec.base_model}: {e}",
                        code="model_not_available",
                        param=f"{GRADER_PARAM}.model",
                    ) from e
                model = model.merge_and_unload()  # a plain model: faster to run, and no adapter to switch
            else:  # fully fine-tuned: a whole model, with its tokenizer
                model = model_from(local)
                tokenizer_folder = local if (local / "tokenizer_config.json").is_file() else base
        model.to(self.device).eval()
        model.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True, trust_remote_code=False)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    # -- judging
    def complete(self, model: str, conversations: list[list[Message]], sampling: JudgeSampling) -> list[JudgeReply]:
        loaded = self._models.get(model)
        if loaded is None:
            return [JudgeReply(error=f"the judge {model} is not in the job's spec")] * len(conversations)
        self._calls += 1
        replies: list[JudgeReply] = []
        for start in range(0, len(conversations), BATCH):
            replies += self._generate(*loaded, conversations[start : start + BATCH], sampling)
        return replies

    def _generate(
        self, model: Any, tokenizer: Any, conversations: list[list[Message]], sampling: JudgeSampling
    ) -> list[JudgeReply]:
        import torch

        texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        options: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": tokenizer.pad_token_id}
        if sampling.greedy:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        # A seed of the grader's, or one of the judge's own (its calls counted): never the policy's random state.
        seed = sampling.seed if sampling.seed is not None else 1_000_003 * self._calls
        devices = [torch.device(self.device)] if str(self.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed % 2**63)
            out = model.generate(**batch, **options)
        new = out[:, batch["input_ids"].shape[1] :]
        eos = {tokenizer.eos_token_id, *(_ids(getattr(model.generation_config, "eos_token_id", None)))}
        replies = []
        for row, mask in zip(new.tolist(), batch["attention_mask"].tolist(), strict=True):
            end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))  # the EOS counts, as served
            replies.append(
                JudgeReply(
                    text=tokenizer.decode(row[:end], skip_special_tokens=True),
                    prompt_tokens=int(sum(mask)),
                    completion_tokens=end,
                )
            )
        return replies


class TransformersEmbedder:
    """The embedding model of a reinforcement job's cosine metrics (tunery.graders.Embedder), loaded once at start
    beside the policy from the folder the scheduler resolved (``JobSpec.embedding_model``), embedding a step's texts
    in batches with :func:`tunery.embeddings.embed`: the function the API's ``graders/run`` embeds with, so a reward
    while training is the one it answers. A text past the model's context is cut to it, as on the API."""

    def __init__(self, spec: EmbeddingSpec, device: str, dtype: Any):
        self.spec = spec
        started = time.monotonic()
        try:
            self.model, self.tokenizer = embeddings.load(spec.path, device, dtype)
        except (FileNotFoundError, OSError, ValueError) as e:
            raise TrainerError(
                f"the embedding model {spec.model} of the grader's cosine metric cannot be loaded: {e}",
                code="model_not_available",
                param=f"{GRADER_PARAM}.evaluation_metric",
            ) from e
        log.info("embedding model %s loaded on %s in %.1fs", spec.model, device, time.monotonic() - started)

    def embed(self, texts: list[str]) -> list[list[float]]:
        return embeddings.embed(self.model, self.tokenizer, texts, truncate=True).vectors


def grader_models(
    spec: JobSpec, store: ObjectStore, device: str, dtype: Any, workdir: str
) -> tuple[TransformersJudge | None, TransformersEmbedder | None]:
    """A grader's models, loaded beside the policy or the evaluated model: the judges of its score_model graders
    (``spec.judges``) and the embedding model of its cosine metrics (``spec.embedding_model``), both resolved by the
    scheduler; None for each it has not."""
    judge = TransformersJudge(spec.judges, store, device, dtype, workdir) if spec.judges else None
    embedding = spec.embedding_model
    return judge, TransformersEmbedder(embedding, device, dtype) if embedding else None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [int(value)]
