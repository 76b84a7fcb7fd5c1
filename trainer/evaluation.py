"""The eval report of each checkpoint and of the final model (docs/evals.md, the typed report in tunery/evalreport.py).

    before training: the model the job starts from ("base") scores the validation conversations and the forgetting
                     reference set, and answers the sample prompts (greedy)       -> Baseline (kept for the run)
    at a checkpoint: the model being trained does the same                        -> EvalReport, written beside the
                     checkpoint before its manifest (a prefix with a manifest is complete, and so is its report)

Scoring is the training loss as the trainer computes it: the mean negative log-likelihood of the assistant tokens
(the tokens that carry loss, trainer/chat.py), summed per conversation so per-example losses and set means come from
one pass. For the preference methods a validation pair is scored twice (prompt + chosen, prompt + rejected), which
also gives DPO's implicit rewards against the base. Nothing here draws random numbers or changes the model's mode
for longer than the report: training continues exactly as it would have without it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunery.data import ChatMessage, ChatRecord, PreferenceRecord
from tunery.data_parsers import parse_chat_line
from tunery.evalreport import (
    DEFAULT_REFERENCE,
    Comparison,
    EvalOptions,
    EvalReport,
    Forgetting,
    HardExample,
    LossFigures,
    Percentiles,
    PreferenceFigures,
    Sample,
    default_reference_lines,
    gate_result,
)
from tunery.jobstate import REFERENCE_PARAM

from .chat import ChatTemplateError, ChatTokenizer, TokenizedExample
from .checkpoint import library_versions, utc_now
from .data_files import read_chat_file
from .greedy import greedy_answers
from .loading import WeightsIn, eval_dtype
from .reward_eval import Answers, RewardEvaluator

if TYPE_CHECKING:
    from tunery.graders import Embedder, Judge

    from .base import TrainingRun
    from .data_files import DataFileRead

log = logging.getLogger("tunery.trainer.eval")

HARDEST = 5  # hardest validation examples listed
TEXT_CHARS = 240  # of an example's text in the report
SCORE_BATCH = 8  # conversations per forward pass


@dataclass
class Scores:
    """Per-conversation summed NLL and token counts (those with no trained token are left out)."""

    nll: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def figures(self) -> LossFigures:
        return LossFigures.of(sum(self.nll), sum(self.tokens), len(self.nll))

    def per_example(self) -> list[float]:
        return [n / t for n, t in zip(self.nll, self.tokens, strict=True)]


@dataclass
class EvalSet:
    """Tokenized conversations to score; ``lines`` are their lines in the file."""

    examples: list[TokenizedExample]
    lines: list[int]
    texts: list[str]


@dataclass
class Baseline:
    valid: Scores | None
    rejected: Scores | None
    reference: Scores | None
    samples: list[str]
    rewards: Answers | None = None  # a reinforcement job's graded answers (trainer/reward_eval.py)


def last_turns(record: ChatRecord) -> tuple[list[ChatMessage], str]:
    """The prompt (every message before the last assistant turn) and that turn's text."""
    last = max(i for i, m in enumerate(record.messages) if m.role == "assistant")
    return record.messages[:last], record.messages[last].content


def preview(record: ChatRecord) -> str:
    prompt, answer = last_turns(record)
    user = next((m.content for m in reversed(prompt) if m.role == "user"), "")
    text = f"user: {user} | assistant: {answer}"
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def as_conversations(records: list[Any]) -> tuple[list[ChatRecord], list[ChatRecord] | None]:
    """Chat records as they are; preference pairs as (prompt + chosen) and (prompt + rejected) conversations."""
    if not records or not isinstance(records[0], PreferenceRecord):
        return list(records), None
    chosen = [ChatRecord(messages=[*r.prompt, r.chosen], line=r.line, tools=r.tools) for r in records]
    rejected = [ChatRecord(messages=[*r.prompt, r.rejected], line=r.line, tools=r.tools) for r in records]
    return chosen, rejected


class Evaluator:
    """Measures the base once (:meth:`measure_baseline`) and each checkpoint (:meth:`report`) of one run."""

    def __init__(
        self,
        run: TrainingRun,
        chat: ChatTokenizer,
        options: EvalOptions,
        judge: Judge | None = None,
        embedder: Embedder | None = None,
    ):
        self.run = run
        self.judge = judge  # a reinforcement job's score_model judge, for the rewards
        self.embedder = embedder  # and its cosine metric's embedding model
        self.chat = chat
        self.options = options
        self.valid: EvalSet | None = None
        self.rejected: EvalSet | None = None
        self.reference: EvalSet | None = None
        self.reference_name = options.reference_file or DEFAULT_REFERENCE
        self.prompts: list[tuple[int, str, str, list[ChatMessage], Any]] = []  # line, prompt, expected, msgs, tools
        self.samples_from: str | None = None
        self.baseline: Baseline | None = None
        self.rewards: RewardEvaluator | None = None  # a reinforcement job's
        self.missing: list[str] = []
        self.seconds = 0.0  # spent measuring (the baseline and every report): what the reports add to the run
        self.dtype = ""  # what the last measure ran in (tunery.eval.precision, trainer/loading.py's eval_dtype)
        self.drafts: list[list[int]] | None = None  # the last samples' tokens: the next report's drafts
        self.verified = 0  # of the last samples, those their drafts answered
        self.decoded = 0  # of the last samples' tokens, those decoded one by one in the model's own dtype

    # -- what is scored
    def _tokenize(self, records: list[ChatRecord]) -> EvalSet:
        out = EvalSet([], [], [])
        for record in records:
            try:
                example = self.chat.tokenize(record, self.run.plan.max_seq_length)
            except ChatTemplateError:
                continue
            if example.n_trained:
                out.examples.append(example)
                out.lines.append(record.line)
                out.texts.append(preview(record))
        return out

    def prepare(self, train: DataFileRead, valid: DataFileRead | None, kind: str | None = None) -> None:
        """Choose and tokenize the validation conversations, the reference set and the sample prompts. ``kind``: what
        the files hold (``supervised``, ``preference`` or ``reinforcement``), by default the data of the run's method
        (an on-demand evaluation says, trainer/evaluate.py: a reinforcement job's model may be scored on chat data)."""
        opts = self.options
        kind = kind or self.run.method.info.data
        if kind == "reinforcement":
            self._prepare_reinforcement(train, valid)
            return
        if valid is not None:
            chosen, rejected = as_conversations(valid.records[: opts.max_examples])
            self.valid = self._tokenize(chosen)
            if rejected is not None:
                self.rejected = self._tokenize(rejected)
                if self.rejected.lines != self.valid.lines:  # a pair is scored on both sides or not at all
                    keep = set(self.valid.lines) & set(self.rejected.lines)
                    self.valid, self.rejected = _only(self.valid, keep), _only(self.rejected, keep)
        else:
            self.missing.append("validation loss and perplexity: the job has no validation file")
            if kind == "preference":
                self.missing.append("reward accuracy and margins: the job has no validation file")
        self._prepare_reference()
        source = valid if valid is not None else train
        self.samples_from = "validation_file" if valid is not None else "training_file"
        if valid is None:
            self.missing.append(
                "samples are from the training file (no validation file): they show fit, not generalization"
            )
        conversations, _ = as_conversations(source.records)
        picked = sorted(
            random.Random(self.run.spec.seed).sample(range(len(conversations)), min(opts.samples, len(conversations)))
        )
        for i in picked:
            record = conversations[i]
            prompt, expected = last_turns(record)
            user = next((m.content for m in reversed(prompt) if m.role == "user"), "")
            self.prompts.append((record.line, user, expected, prompt, record.tools))

    def _prepare_reinforcement(self, train: DataFileRead, valid: DataFileRead | None) -> None:
        """A reinforcement job's prompts have no answer to score by loss: its report grades the answers of the base
        and of the model (trainer/reward_eval.py); the forgetting check is the same as every job's."""
        self.missing.append(
            "validation loss, perplexity and loss samples: reinforcement prompts have no answer to score (the "
            "rewards of the base's and the model's answers are measured instead)"
        )
        self._prepare_reference()
        self.rewards = RewardEvaluator(self.run, self.options, self.judge, self.embedder)
        self.rewards.prepare(train, valid)
        if valid is None:
            self.missing.append(
                "rewards are measured on the training file's prompts (no validation file): they show fit, not "
                "generalization"
            )

    def _prepare_reference(self) -> None:
        self.reference = self._tokenize(self._reference_records())
        if not self.reference.examples:
            self.reference = None
            self.missing.append(f"forgetting check: no example of {self.reference_name} fits max_seq_length")

    def _reference_records(self) -> list[ChatRecord]:
        spec = self.run.spec
        if spec.eval_reference_file is not None:
            return list(read_chat_file(self.run.store, spec.eval_reference_file, REFERENCE_PARAM).records)
        return [parse_chat_line(json.loads(line), i) for i, line in enumerate(default_reference_lines(), start=1)]

    # -- measuring
    def _score(self, model: Any, data: EvalSet | None) -> Scores | None:
        if data is None:
            return None
        import torch

        device = next(model.parameters()).device
        pad = self.run.tokenizer.pad_token_id
        pad = pad if pad is not None else 0
        scores = Scores([0.0] * len(data.examples), [0] * len(data.examples))
        order = sorted(range(len(data.examples)), key=lambda i: len(data.examples[i].input_ids))
        for start in range(0, len(order), SCORE_BATCH):
            batch = [data.examples[i] for i in order[start : start + SCORE_BATCH]]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            trained = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, e in enumerate(batch):
                n = len(e.input_ids)
                ids[row, :n] = torch.tensor(e.input_ids)
                attention[row, :n] = 1
                trained[row, :n] = torch.tensor(e.assistant_masks, dtype=torch.bool)
            ids, attention, trained = ids.to(device), attention.to(device), trained.to(device)
            mask = trained[:, 1:]  # the tokens that carry loss, predicted from the position before each
            logits = masked_logits(model, ids, attention, mask)
            nll = torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][mask], reduction="none")
            rows = torch.arange(len(batch), device=device).unsqueeze(1).expand_as(mask)[mask]
            sums = torch.zeros(len(batch), device=device).index_add_(0, rows, nll).tolist()
            counts = mask.sum(dim=1).tolist()
            for row, i in enumerate(order[start : start + SCORE_BATCH]):
                scores.nll[i], scores.tokens[i] = float(sums[row]), int(counts[row])
        return scores

    def _generate(self, model: Any, draft_weights: WeightsIn) -> list[str]:
        """Every sample prompt's greedy answer, in one batch, drafted and checked (trainer/greedy.py): the last
        report's answers are tried first (a model that answers as it did costs one forward pass instead of a decoding
        loop), then drafts decoded with ``draft_weights`` (the scoring dtype's: bf16 where tunery.eval.precision
        allows)."""
        if not self.prompts:
            return []
        tok = self.run.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        encoded = [
            tok(self.chat.render(prompt, add_generation_prompt=True, tools=tools), add_special_tokens=False)[
                "input_ids"
            ]
            for _, _, _, prompt, tools in self.prompts
        ]
        got = greedy_answers(model, encoded, self.options.max_new_tokens, pad, self.drafts, draft_weights)
        self.drafts, self.verified, self.decoded = got.answers, got.verified, got.decoded
        return [tok.decode(answer, skip_special_tokens=True).strip() for answer in got.answers]

    def _measure(self, model: Any) -> Baseline:
        import torch

        was_training = model.training
        model.eval()
        dtype = eval_dtype(model, self.options.precision)
        scoring = WeightsIn(model, dtype)
        try:
            with torch.no_grad():
                # Losses in the scoring dtype (bf16 where tunery.eval.precision allows it); answers in the model's
                # own, as the model is served on this hardware (near a turning point in training, bf16's rounding
                # can change what greedy decoding says): drafted in the scoring dtype, each token checked in its own.
                with scoring.active():
                    self.dtype = str(dtype or next(model.parameters()).dtype).removeprefix("torch.")
                    t0 = time.monotonic()
                    valid, rejected = self._score(model, self.valid), self._score(model, self.rejected)
                    t1 = time.monotonic()
                    reference = self._score(model, self.reference)
                t2 = time.monotonic()
                samples = self._generate(model, scoring)
                t3 = time.monotonic()
                rewards = self.rewards.measure(model) if self.rewards is not None else None
                log.info(
                    "eval: validation scored in %.1fs, reference in %.1fs (%s), %d samples (%d from drafts, %d "
                    "tokens decoded) generated in %.1fs%s",
                    t1 - t0,
                    t2 - t1,
                    self.dtype,
                    len(samples),
                    self.verified,
                    self.decoded,
                    t3 - t2,
                    f", {len(rewards.greedy) + len(rewards.sampled)} answers graded in {time.monotonic() - t3:.1f}s"
                    if rewards is not None
                    else "",
                )
                return Baseline(valid=valid, rejected=rejected, reference=reference, samples=samples, rewards=rewards)
        finally:
            if was_training:
                model.train()

    def measure_baseline(self, model: Any) -> None:
        """Score the model the job starts from: call it before the first training step (its adapter is still the
        initial one, or the whole model the base, even in a resumed run: states load inside ``train``)."""
        t0 = time.monotonic()
        if adds_nothing(model):  # a fresh LoRA adapter: the base alone computes the same, without its layers
            with model.disable_adapter():
                self.baseline = self._measure(model)
        else:
            self.baseline = self._measure(model)
        self.seconds += time.monotonic() - t0
        log.info("eval: baseline measured in %.1fs", time.monotonic() - t0)

    def report(self, model: Any, name: str, step: int, epoch: float, training_loss: float | None) -> EvalReport:
        """The report of ``model`` (named ``name``) at ``step``."""
        assert self.baseline is not None, "measure_baseline first"
        t0 = time.monotonic()
        now = self._measure(model)
        base, spec, plan = self.baseline, self.run.spec, self.run.plan
        report = EvalReport(
            job_id=spec.job_id,
            model=name,
            step=step,
            epoch=epoch,
            base_model=spec.base_model,
            baseline="the fine-tuned model the job continues" if spec.init_adapter_prefix else "the base model",
            created_at=utc_now(),
            training_loss=training_loss,
            samples_from=self.samples_from,  # type: ignore[arg-type]
            missing=list(self.missing),
            provenance={
                "seed": spec.seed,
                "data_files": self.run.data_sha256,
                "hyperparameters": plan.model_dump(),
                "eval": self.options.model_dump(),
                "eval_dtype": self.dtype,  # the losses' (tunery.eval.precision resolved)
                "versions": library_versions(),
            },
        )
        if now.valid is not None and base.valid is not None and self.valid is not None and now.valid.nll:
            report.validation = Comparison.of(base.valid.figures(), now.valid.figures())
            mine, theirs = now.valid.per_example(), base.valid.per_example()
            report.validation_loss_percentiles = {"base": Percentiles.of(theirs), "model": Percentiles.of(mine)}
            hardest = sorted(range(len(mine)), key=lambda i: mine[i], reverse=True)[:HARDEST]
            report.hardest_examples = [
                HardExample(line=self.valid.lines[i], loss=mine[i], base_loss=theirs[i], text=self.valid.texts[i])
                for i in hardest
            ]
        if now.reference is not None and base.reference is not None:
            forgetting = Comparison.of(base.reference.figures(), now.reference.figures())
            report.forgetting = Forgetting(
                **forgetting.model_dump(),
                reference=self.reference_name,
                threshold=self.options.forgetting_threshold,
                flagged=forgetting.relative_change > self.options.forgetting_threshold,
            )
        if plan.beta is not None and now.valid and now.rejected and base.valid and base.rejected:
            report.preference = preference_figures(plan.beta, base.valid, base.rejected, now.valid, now.rejected)
        report.samples = [
            Sample(line=line, prompt=prompt, expected=expected, base=b, fine_tuned=f)
            for (line, prompt, expected, _, _), b, f in zip(self.prompts, base.samples, now.samples, strict=True)
        ]
        if self.rewards is not None and base.rewards is not None and now.rewards is not None:
            report.reward = self.rewards.report(base.rewards, now.rewards)
        if self.options.gate is not None:
            report.gate = gate_result(self.options.gate, report)
        report.seconds = time.monotonic() - t0
        self.seconds += report.seconds
        log.info(
            "eval: %s step %d%s%s%s (%.1fs)",
            name,
            step,
            f", validation loss {report.validation.model.loss:.4f} ({report.validation.relative_change:+.1%})"
            if report.validation
            else "",
            f", forgetting {report.forgetting.relative_change:+.1%}" if report.forgetting else "",
            f", reward {report.reward.greedy.model.mean:.4f} ({report.reward.greedy.change:+.4f})"
            if report.reward
            else "",
            report.seconds,
        )
        return report


def adds_nothing(model: Any) -> bool:
    """Whether ``model`` is a PEFT model whose adapter adds exactly nothing to the base's outputs: plain LoRA (no
    DoRA magnitudes, no trained copies of whole modules) whose B matrices are all zero, as PEFT initializes them. Its
    outputs are then the base's, bit for bit (each layer adds ``B(A x) * scale``, exactly 0), and the baseline is
    measured with the adapter disabled: the same figures, without the adapter's extra work in every layer. A run that
    continues an adapter (or resumes one) has nonzero B and is measured as it is."""
    if not hasattr(model, "disable_adapter") or not hasattr(model, "peft_config"):
        return False
    if any(getattr(config, "peft_type", None) != "LORA" for config in model.peft_config.values()):
        return False
    lora_b = 0
    for name, param in model.named_parameters():
        if "modules_to_save" in name or "magnitude" in name:
            return False
        if "lora_B" in name or "lora_embedding_B" in name:
            lora_b += 1
            if bool(param.detach().any()):
                return False
    return lora_b > 0


def masked_logits(model: Any, ids: Any, attention: Any, mask: Any) -> Any:
    """The next-token logits at the positions ``mask`` selects (``mask[:, t]``: the logits of position t, predicting
    token t + 1), one row each. The output layer runs on those positions only (a large vocabulary makes it a fifth of
    a small model's work), where the model's decoder and output layer can be reached; the whole model otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder: Any = base.get_decoder() if hasattr(base, "get_decoder") else None
    head: Any = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return model(input_ids=ids, attention_mask=attention).logits[:, :-1][mask]
    hidden = decoder(input_ids=ids, attention_mask=attention).last_hidden_state[:, :-1]
    return head(hidden[mask])


def _only(data: EvalSet, lines: set[int]) -> EvalSet:
    keep = [i for i, line in enumerate(data.lines) if line in lines]
    return EvalSet([data.examples[i] for i in keep], [data.lines[i] for i in keep], [data.texts[i] for i in keep])


def preference_figures(
    beta: float, base_chosen: Scores, base_rejected: Scores, chosen: Scores, rejected: Scores
) -> PreferenceFigures:
    """DPO's implicit reward of each reply, ``beta * (log p_model - log p_base)``, over the validation pairs."""
    rc = [beta * (b - m) for m, b in zip(chosen.nll, base_chosen.nll, strict=True)]  # log p = -nll
    rr = [beta * (b - m) for m, b in zip(rejected.nll, base_rejected.nll, strict=True)]
    n = len(rc)
    return PreferenceFigures(
        pairs=n,
        beta=beta,
        reward_accuracy=sum(c > r for c, r in zip(rc, rr, strict=True)) / n if n else 0.0,
        reward_margin=sum(c - r for c, r in zip(rc, rr, strict=True)) / n if n else 0.0,
        chosen_reward=sum(rc) / n if n else 0.0,
        rejected_reward=sum(rr) / n if n else 0.0,
    )
