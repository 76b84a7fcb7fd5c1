"""Reinforcement fine-tuning (OpenAI's ``reinforcement`` method) with TRL's GRPOTrainer: the model samples
``num_generations`` completions of each prompt, the job's grader scores each one (:func:`tunery.graders.run_grader`,
the code ``graders/run`` answers with; a score_model's judge loaded in the trainer, trainer/judge.py), and the
policy moves toward the completions that scored above their group's mean.

    reinforcement records -> rows (prompt: the conversation; item: the line's other fields, as JSON)
         -> GRPOTrainer on the job's adapter, rewards from the grader -> reward mean/std, KL, completion length

A step is ``batch_size`` prompts (OpenAI's "examples in each batch"), each sampled ``num_generations`` times: TRL's
micro-batch counts completions, so it is the plan's micro-batch of prompts times the group size. TRL samples whole
batches of prompts, so an epoch covers ``n - n % batch_size`` prompts (a different remainder left out each epoch, as
its sampler shuffles). The KL term (``tunery.reinforcement.kl_coef``, GRPO's beta) is 0 by default, as in TRL: then
no reference model is kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tunery.data import ReinforcementRecord
from tunery.graders import (
    AnyGrader,
    Embedder,
    GradeResult,
    GraderNotRunnable,
    Judge,
    check_runnable,
    cosine_graders,
    model_graders,
    parse_grader,
    run_graders,
)
from tunery.methods import GRADER_PARAM, METHODS
from tunery.plan import ReinforcementPlan, TrainingPlan

from ..errors import TrainerError
from ..generation import VLLM, use_in_place_reload, vllm_config_args
from .base import Datasets, TrainerMethod
from .registry import register

if TYPE_CHECKING:
    from ..base import TrainingRun
    from ..chat import ChatTokenizer
    from ..data_files import DataFileRead
    from ..loading import DeviceChoice

log = logging.getLogger("tunery.trainer.grpo")

# TRL's per-step logs reported as the method's figures, and their names in events and results.csv.
METRICS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "entropy": "entropy",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "completion_clipped_ratio",
    # Where vLLM samples (trainer/generation.py): the mean gap between its log-probabilities of the sampled tokens and
    # the policy's, near 0 while its weights follow the policy's.
    "sampling/sampling_logp_difference/mean": "sampling_logp_difference",
}
RESULTS_EXTRA = ("reward", "reward_std", "kl", "completion_length", "valid_reward")


def _rl(plan: TrainingPlan) -> ReinforcementPlan:
    if plan.reinforcement is None:
        raise TrainerError("a reinforcement job's plan has no grader", code="server_error", param=GRADER_PARAM)
    return plan.reinforcement


def rows(records: list[ReinforcementRecord]) -> list[dict[str, Any]]:
    """GRPO's conversational rows: the prompt, the line's other fields and its tools, each as JSON (one column of
    strings, as the fields differ from line to line, which an Arrow column of structs cannot hold; "" for no
    tools)."""
    return [
        {
            "prompt": [m.as_template_dict() for m in r.prompt],
            "item": json.dumps(r.item),
            "tools": json.dumps(r.tools) if r.tools else "",
        }
        for r in records
    ]


def row_tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A row's function tools (the line's ``tools``), or None."""
    raw = row.get("tools")
    return json.loads(raw) if raw else None


def render_kwargs(tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The chat template's arguments for a prompt's tools, as the chat format's lines render theirs (trainer/chat.py):
    none at all without tools (a template may render tool boilerplate for an empty list)."""
    return {"tools": tools} if tools else {}


def prompt_tokens(tokenizer: Any, prompt: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    """A prompt's tokens as the model reads it: rendered with the chat template, its tools and the generation
    prompt."""
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, **render_kwargs(tools))
    return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)  # transformers 5: a BatchEncoding


def output_text(completion: Any) -> str:
    """The sampled answer's text: TRL gives a conversational prompt's completion as its assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant")


def grade(
    grader: AnyGrader,
    texts: list[str],
    items: list[Any],
    judge: Judge | None = None,
    embedder: Embedder | None = None,
) -> list[GradeResult]:
    """Each answer graded against its line's fields, as ``graders/run`` grades it (one sandbox for a python grader,
    one judge batch for a model grader, one embedding batch for a cosine metric); the problems logged once per batch.
    The one home of a reinforcement job's grading: the training rewards and the eval report's
    (trainer/reward_eval.py)."""
    results = run_graders(grader, texts, items, GRADER_PARAM, judge=judge, embedder=embedder)
    problems = [p for r in results for p in r.problems]
    if problems:
        log.warning("grader: %d problem(s) in this batch, first: %s", len(problems), problems[0])
    return results


def grader_reward(
    grader: AnyGrader, judge: Judge | None = None, embedder: Embedder | None = None
) -> Callable[..., list[float]]:
    """TRL's reward function: each completion graded against its row's item, as ``graders/run`` grades it (an error
    flag is a reward of 0, a score_model's its range's minimum, logged once per batch); a python grader grades a
    batch in one sandbox, a score_model's ``judge`` (trainer/judge.py) judges a batch at once, and a cosine metric's
    ``embedder`` (trainer/judge.py) embeds a batch's texts at once."""

    def reward(prompts: list[Any], completions: list[Any], item: list[str] | None = None, **_: Any) -> list[float]:
        items = [json.loads(i) for i in item] if item else [{} for _ in completions]
        texts = [output_text(c) for c in completions]
        return [float(r.reward) for r in grade(grader, texts, items, judge, embedder)]

    reward.__name__ = "grader"  # TRL logs rewards/<name>/mean
    return reward


def tools_trainer_class() -> type:
    """TRL's GRPOTrainer, rendering each prompt with its own line's ``tools`` (TRL renders one set of callable tools
    for every prompt): the rows' tools are taken from the batch before its prompts are tokenized."""
    from trl import GRPOTrainer

    class ToolsGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
        _row_tools: list[list[dict[str, Any]] | None] | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            use_in_place_reload(self)  # a colocated vLLM's weights, replaced in one pass (trainer/generation.py)

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
            self._row_tools = [row_tools(x) for x in inputs]
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                self._row_tools = None

        def _tokenize_prompts(self, prompts: list[Any]) -> Any:
            tools = self._row_tools
            if not tools or not any(tools) or len(tools) != len(prompts):
                return super()._tokenize_prompts(prompts)
            ids = []
            template: Any = self.processing_class  # a tokenizer: reinforcement jobs are text-only
            kwargs = self.chat_template_kwargs
            extra: dict[str, Any] = kwargs if isinstance(kwargs, dict) else {}
            for prompt, own in zip(prompts, tools, strict=True):
                out: Any = template.apply_chat_template(
                    conversation=prompt,
                    chat_template=self.chat_template,
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    **render_kwargs(own),
                    **extra,
                )
                ids.append(list(out["input_ids"]))
            return ids, None, {}

    return ToolsGRPOTrainer


class GRPO(TrainerMethod):
    info = METHODS["grpo"]
    results_columns = RESULTS_EXTRA
    # The eval report (trainer/evaluation.py) grades the base's and the model's answers (trainer/reward_eval.py).
    valid_loss_from_eval = False  # GRPO's eval_loss is its surrogate objective: the validation figure is the reward

    def config_class(self) -> type:
        from trl import GRPOConfig

        return GRPOConfig

    def config_args(
        self, args: dict[str, Any], plan: TrainingPlan, choice: DeviceChoice, model_path: str
    ) -> dict[str, Any]:
        rl = _rl(plan)
        out = {k: v for k, v in args.items() if k != "max_length"}  # GRPO bounds the completion, not the row
        if choice.generation == VLLM:  # a step's completions sampled at once, each prompt fitting max_seq_length
            sequences, max_len = plan.batch_size * rl.num_generations, plan.max_seq_length + rl.max_completion_length
            out.update(vllm_config_args(plan, model_path, choice.device, choice.precision, sequences, max_len))
        out.update(
            per_device_train_batch_size=plan.micro_batch_size * rl.num_generations,
            per_device_eval_batch_size=plan.micro_batch_size * rl.eval_samples,
            num_generations=rl.num_generations,
            num_generations_eval=rl.eval_samples,
            max_completion_length=rl.max_completion_length,
            temperature=rl.temperature,
            beta=rl.kl_coef,
            log_completions=False,
        )
        return out

    def trainer_class(self) -> type:
        return tools_trainer_class()

    def trainer_extra(
        self, ref_model: Any, plan: TrainingPlan | None, judge: Judge | None = None, embedder: Embedder | None = None
    ) -> dict[str, Any]:
        if plan is None:
            raise TrainerError("a reinforcement trainer is built from its plan", code="server_error")
        grader = parse_grader(_rl(plan).grader, GRADER_PARAM)
        try:  # the API checked it where it runs; the trainer's machine may lack what it needs (a python sandbox)
            check_runnable(grader, GRADER_PARAM, embeddings=embedder is not None)
        except GraderNotRunnable as e:
            raise TrainerError(
                f"the trainer cannot run this job's grader: {e.message}", code="unsupported_method", param=e.param
            ) from None
        if model_graders(grader) and judge is None:  # the scheduler resolves every judge into the spec
            raise TrainerError(
                "the job's score_model grader has no judge model in the trainer's spec",
                code="server_error",
                param=f"{GRADER_PARAM}.model",
            )
        cosines = cosine_graders(grader, GRADER_PARAM)
        if cosines and embedder is None:  # the scheduler resolves the embedding model into the spec
            raise TrainerError(
                f"the cosine metric of the job's grader ('{cosines[0][0]}') has no embedding model in the trainer's "
                "spec",
                code="server_error",
                param=f"{cosines[0][0]}.evaluation_metric",
            )
        return {"reward_funcs": [grader_reward(grader, judge, embedder)]}

    def build_datasets(
        self, run: TrainingRun, chat: ChatTokenizer, train: DataFileRead, valid: DataFileRead | None
    ) -> Datasets:
        from datasets import Dataset

        train_rows = self._fitting(run, rows(train.records), "training_file")
        valid_rows = self._fitting(run, rows(valid.records), "validation_file") if valid else None
        return Datasets(
            train=Dataset.from_list(train_rows),
            valid=Dataset.from_list(valid_rows) if valid_rows else None,
            n_examples=len(train_rows),
        )

    def _fitting(self, run: TrainingRun, examples: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
        """The rows whose prompt fits ``max_seq_length`` tokens (rendered with the generation prompt). A longer one
        is dropped with ``tunery.data.long_examples = "drop"``, and refused otherwise: cutting a prompt would
        change the question its grader scores."""
        max_len, tok = run.plan.max_seq_length, run.tokenizer
        lengths = [prompt_tokens(tok, r["prompt"], row_tools(r)) for r in examples]
        long = [i for i, n in enumerate(lengths) if n > max_len]
        if not long:
            return examples
        if run.spec.data is not None and run.spec.data.long_examples == "drop":
            run.reporter.event(
                "info",
                f"Data options: {len(long)} prompt(s) of {param} longer than max_seq_length={max_len} tokens dropped",
                {"file": param, "long_dropped": len(long)},
            )
            dropped = set(long)
            kept = [r for i, r in enumerate(examples) if i not in dropped]
            if kept:
                return kept
        raise TrainerError(
            f"{param}: {len(long)} prompt(s) are longer than max_seq_length={max_len} tokens (the first is "
            f"{lengths[long[0]]} tokens); raise tunery.training.max_seq_length, or set tunery.data.long_examples "
            '"drop"',
            code="invalid_training_file" if param == "training_file" else "invalid_validation_file",
            param=param,
        )

    def count_examples(self, run: TrainingRun, trainer: Any, datasets: Datasets) -> int:
        """The prompts an epoch samples (whole batches), and the tokens the model reads: each prompt rendered with
        the chat template, once per completion (the completions' own tokens are counted per step, in the metrics)."""
        n, batch = datasets.n_examples, run.plan.batch_size
        left_out = n % batch
        if left_out:
            run.warn(
                f"{left_out} of {n} prompts are left out of each epoch: a step samples whole batches of "
                f"batch_size={batch} prompts (a different {left_out} each epoch)",
                {"file": "training_file", "left_out": left_out, "batch_size": batch},
            )
        tok = run.tokenizer
        lengths = [prompt_tokens(tok, row["prompt"], row_tools(row)) for row in datasets.train]
        run.tokens_per_epoch = run.trained_tokens_per_epoch = sum(lengths) * _rl(run.plan).num_generations
        return n - left_out

    def metrics(self, logs: dict[str, Any]) -> dict[str, float]:
        return {name: float(logs[key]) for key, name in METRICS.items() if isinstance(logs.get(key), int | float)}

    def manifest_extra(self, run: TrainingRun) -> dict[str, Any]:
        rl = _rl(run.plan)
        judges = {name: judge.model_dump() for name, judge in run.spec.judges.items()}  # what judged the rewards
        embedding = run.spec.embedding_model  # what embedded the texts of the cosine metrics
        return {
            "reinforcement": rl.model_dump(),
            **({"judges": judges} if judges else {}),
            **({"embedding_model": embedding.model_dump()} if embedding else {}),
        }


register(GRPO())
