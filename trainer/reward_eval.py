"""The rewards section of a reinforcement job's eval report (docs/reinforcement.md, the typed section in
tunery/evalreport.py: :class:`RewardReport`).

    before training: the model the job starts from answers the evaluated prompts   -> Answers (kept for the run)
    at a checkpoint: the model being trained answers the same prompts              -> RewardReport, base against it

The evaluated prompts are the validation file's (the training file's when the job has none: the report says so), the
first ``tunery.eval.max_examples`` of them, rendered with the chat template as the policy sees them in training. Each
is answered greedily once, and sampled ``eval_samples`` times (OpenAI's hyperparameter) at the job's temperature from
a fixed seed in a forked random state, so training's random numbers do not move and base and model draw alike. Every
answer is graded by :func:`trainer.methods.grpo.grade`, the code of the training rewards (and of ``graders/run``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunery.data import ReinforcementRecord
from tunery.evalreport import EvalOptions, RewardComparison, RewardFigures, RewardReport, RewardSample
from tunery.graders import Embedder, GradeResult, Judge, parse_grader, pass_threshold
from tunery.methods import GRADER_PARAM

from .greedy import left_padded
from .methods.grpo import grade, render_kwargs

if TYPE_CHECKING:
    from .base import TrainingRun
    from .data_files import DataFileRead

GENERATE_BATCH = 16  # prompts per generate call
PROMPT_CHARS = 240  # of a sample's prompt in the report


@dataclass
class Answers:
    """One model's answers to the evaluated prompts and their grades: greedy (one a prompt) and sampled
    (``eval_samples`` a prompt, prompt after prompt)."""

    greedy: list[str]
    greedy_grades: list[GradeResult]
    sampled: list[str]
    sampled_grades: list[GradeResult]


def figures(grades: list[GradeResult], prompts: int, threshold: float | None) -> RewardFigures:
    subs = [{k: float(v) for k, v in g.sub_rewards.items() if isinstance(v, int | float)} for g in grades]
    return RewardFigures.of(
        [float(g.reward) for g in grades],
        prompts,
        threshold,
        errors=sum(g.metadata.errors.any() for g in grades),
        sub_rewards=subs if any(subs) else None,
    )


def _last_user(record: ReinforcementRecord) -> str:
    text = next((m.content for m in reversed(record.prompt) if m.role == "user"), "")
    text = text if isinstance(text, str) else str(text)
    return text if len(text) <= PROMPT_CHARS else text[: PROMPT_CHARS - 1] + "…"


class RewardEvaluator:
    """Measures the base once and each checkpoint of a reinforcement run (called by trainer/evaluation.py's
    :class:`Evaluator`, inside its ``no_grad`` and eval mode)."""

    def __init__(
        self, run: TrainingRun, options: EvalOptions, judge: Judge | None = None, embedder: Embedder | None = None
    ):
        rl = run.plan.reinforcement
        assert rl is not None, "a reinforcement job's plan has its grader"
        self.run = run
        self.rl = rl
        self.options = options
        self.judge = judge
        self.embedder = embedder
        self.grader = parse_grader(rl.grader, GRADER_PARAM)
        self.threshold = pass_threshold(self.grader)
        self.records: list[ReinforcementRecord] = []
        self.texts: list[str] = []
        self.shown: list[int] = []  # the prompts whose answers the report shows side by side
        self.prompts_from = "validation_file"

    def prepare(self, train: DataFileRead, valid: DataFileRead | None) -> None:
        source = valid if valid is not None else train
        self.prompts_from = "validation_file" if valid is not None else "training_file"
        self.records = [r for r in source.records if isinstance(r, ReinforcementRecord)][: self.options.max_examples]
        tok = self.run.tokenizer
        self.texts = []
        for r in self.records:
            self.texts.append(
                tok.apply_chat_template(
                    [m.as_template_dict() for m in r.prompt],
                    add_generation_prompt=True,
                    tokenize=False,
                    **render_kwargs(r.tools),
                )
            )
        n = len(self.records)
        self.shown = sorted(random.Random(self.run.spec.seed).sample(range(n), min(self.options.samples, n)))

    def _generate(self, model: Any, n: int) -> list[str]:
        """Each prompt's answers: greedy when ``n`` is 0, else ``n`` sampled ones (prompts padded on the left)."""
        tok = self.run.tokenizer
        device = next(model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self.rl.temperature, "top_p": 1.0, "num_return_sequences": n}
            if n
            else {"do_sample": False}
        )
        out: list[str] = []
        for start in range(0, len(self.texts), GENERATE_BATCH):
            encoded = [
                tok(text, add_special_tokens=False)["input_ids"] for text in self.texts[start : start + GENERATE_BATCH]
            ]
            ids, attention, width = left_padded(encoded, pad, device)
            generated = model.generate(
                input_ids=ids,
                attention_mask=attention,
                max_new_tokens=self.rl.max_completion_length,
                use_cache=True,
                pad_token_id=pad,
                **sampling,
            )
            out += [tok.decode(row[width:], skip_special_tokens=True) for row in generated]
        return out

    def measure(self, model: Any) -> Answers:
        import torch

        if not self.records:
            return Answers([], [], [], [])
        items = [r.item for r in self.records]
        greedy = self._generate(model, 0)
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(self.run.spec.seed)
            sampled = self._generate(model, self.rl.eval_samples)
        sampled_items = [item for item in items for _ in range(self.rl.eval_samples)]
        return Answers(
            greedy=greedy,
            greedy_grades=grade(self.grader, greedy, items, self.judge, self.embedder),
            sampled=sampled,
            sampled_grades=grade(self.grader, sampled, sampled_items, self.judge, self.embedder),
        )

    def report(self, base: Answers, now: Answers) -> RewardReport | None:
        n = len(self.records)
        if not n:
            return None
        t = self.threshold
        return RewardReport(
            grader=f"{self.grader.name} ({self.grader.type})",
            prompts_from=self.prompts_from,  # type: ignore[arg-type]
            prompts=n,
            max_completion_length=self.rl.max_completion_length,
            pass_threshold=t,
            greedy=RewardComparison.of(figures(base.greedy_grades, n, t), figures(now.greedy_grades, n, t)),
            sampled=RewardComparison.of(figures(base.sampled_grades, n, t), figures(now.sampled_grades, n, t)),
            eval_samples=self.rl.eval_samples,
            temperature=self.rl.temperature,
            seed=self.run.spec.seed,
            samples=[
                RewardSample(
                    line=self.records[i].line,
                    prompt=_last_user(self.records[i]),
                    base=base.greedy[i],
                    base_reward=float(base.greedy_grades[i].reward),
                    fine_tuned=now.greedy[i],
                    fine_tuned_reward=float(now.greedy_grades[i].reward),
                )
                for i in self.shown
            ],
        )
