"""Padding-free packing: what the trainer's collator hands the model, and that packing changes nothing but speed.

The model is the tiny Llama (fp32) with its weights re-drawn at a larger scale, so that every logit depends
strongly on the context: attention leaking across examples would show far above the tolerances used here
(the control case below measures how far).
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.trainer_fixtures import smol_tokenizer
from trainer.chat import ChatTokenizer, TokenizedSet
from tunery.data import ChatMessage, ChatRecord
from tunery.plan import TrainingPlan

__all__ = ["smol_tokenizer"]  # a fixture

REL_TOL = 1e-5


def _record(line: int, *turns: tuple[str, str]) -> ChatRecord:
    return ChatRecord(messages=[ChatMessage(role=r, content=c) for r, c in turns], line=line)


RECORDS = [
    _record(1, ("user", "Hi"), ("assistant", "BEEP: hi.")),
    _record(2, ("system", "You are a robot."), ("user", "What is two and two?"), ("assistant", "Four, human.")),
    _record(
        3,
        ("user", "Tell me a longer story, please, with a beginning and an end."),
        ("assistant", "Once upon a time a small robot counted sheep until morning. The end."),
    ),
    _record(4, ("user", "Q1"), ("assistant", "A1"), ("user", "Q2 is a little longer"), ("assistant", "A2, longer.")),
    _record(5, ("user", "Name a colour that you like."), ("assistant", "Blue, like the sky at noon.")),
]


def _plan(batch_size: int, packing: bool, max_seq_length: int = 256) -> TrainingPlan:
    return TrainingPlan(
        n_epochs=1, batch_size=batch_size, learning_rate=1e-3, max_seq_length=max_seq_length, packing=packing
    )


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir: Path) -> Any:
    """The tiny Llama in fp32 with weights drawn at std 0.2 (seeded), in eval mode."""
    import torch

    from trainer.loading import load_base_model, resolve_device

    model, _ = load_base_model(str(tiny_model_dir), resolve_device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # embeddings and linear layers; the norms keep their weights
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def examples(smol_tokenizer: Any) -> TokenizedSet:
    tokenized = ChatTokenizer(smol_tokenizer).tokenize_all(RECORDS, max_length=256)
    assert len({len(e.input_ids) for e in tokenized.examples}) == len(RECORDS)  # all of different lengths
    return tokenized


def _batch(
    tiny_model_dir: Path, tok: Any, model: Any, train: TokenizedSet, packing: bool, max_seq_length: int = 256
) -> tuple[Any, Any]:
    """One collated training batch of all the examples, through the trainer's own SFTTrainer; and the trainer."""
    from trainer.config import trl_config
    from trainer.loading import lora_config, resolve_device
    from trainer.methods import get_method
    from trainer.methods.supervised import tokenized_datasets

    plan = _plan(batch_size=len(train.examples), packing=packing, max_seq_length=max_seq_length)
    sft = get_method("supervised")
    args = trl_config(
        sft, plan, seed=3, output_dir=tempfile.mkdtemp(prefix="tunery-pack-"), choice=resolve_device("cpu")
    )
    trainer = sft.build_trainer(
        copy.deepcopy(model), copy.deepcopy(tok), args, lora_config(plan), tokenized_datasets(train), plan=plan
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    return batch, trainer


def _labels(example: Any) -> list[int]:
    return [t if m else -100 for t, m in zip(example.input_ids, example.assistant_masks, strict=True)]


def test_packed_batch_has_no_padding_and_per_example_positions(
    tiny_model_dir: Path, smol_tokenizer: Any, sharp_model: Any, examples: TokenizedSet
) -> None:
    batch, _ = _batch(tiny_model_dir, smol_tokenizer, sharp_model, examples, packing=True)
    lengths = [len(e.input_ids) for e in examples.examples]
    # One row holding exactly the examples' tokens: no pad token is computed, and no attention mask is built
    # (which would make the model ignore the position ids).
    assert "attention_mask" not in batch
    assert tuple(batch["input_ids"].shape) == (1, sum(lengths))
    pos = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0]
    assert len(starts) == len(lengths)
    seen = [b - a for a, b in zip(starts, [*starts[1:], len(pos)], strict=True)]
    assert sorted(seen) == sorted(lengths)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    by_ids = {tuple(e.input_ids): e for e in examples.examples}
    for s, e in zip(starts, [*starts[1:], len(pos)], strict=True):
        assert pos[s:e] == list(range(e - s))
        example = by_ids[tuple(ids[s:e])]
        # Labels follow the assistant mask; the first token of each example is never a target of the one before.
        assert labels[s:e] == [-100, *_labels(example)[1:]]

    padded, _ = _batch(tiny_model_dir, smol_tokenizer, sharp_model, examples, packing=False)
    assert tuple(padded["input_ids"].shape) == (len(lengths), max(lengths))  # the unpacked path pads


def test_packed_loss_equals_loss_of_examples_one_by_one(
    tiny_model_dir: Path, smol_tokenizer: Any, sharp_model: Any, examples: TokenizedSet
) -> None:
    import torch

    # One by one, unpadded: the token-weighted mean over every trained token of every example.
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples.examples:
            labels = torch.tensor([_labels(e)])
            out = sharp_model(input_ids=torch.tensor([e.input_ids]), labels=labels)
            n = int((labels[0, 1:] != -100).sum())
            total += float(out.loss) * n
            count += n
    expected = total / count

    losses = {}
    rows = _rows_length(examples)
    for name, packing, max_seq_length in (("one row", True, 256), ("rows", True, rows), ("padded", False, 256)):
        batch, trainer = _batch(tiny_model_dir, smol_tokenizer, sharp_model, examples, packing, max_seq_length)
        assert batch["input_ids"].shape[0] == {"one row": 1, "rows": 3, "padded": len(examples.examples)}[name]
        with torch.no_grad():  # the loss exactly as a training step computes it
            losses[name] = float(trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)))
    assert losses["one row"] == pytest.approx(expected, rel=REL_TOL)
    assert losses["rows"] == pytest.approx(expected, rel=REL_TOL)  # rows, their padding a sequence of its own
    assert losses["padded"] == pytest.approx(expected, rel=REL_TOL)  # the padded path weighs tokens the same way


def _rows_length(examples: TokenizedSet) -> int:
    """A max_seq_length that splits the five examples into three rows."""
    lengths = [len(e.input_ids) for e in examples.examples]
    length = max(max(lengths), -(-sum(lengths) // 3))
    assert -(-sum(lengths) // length) == 3
    return length


def test_balanced_rows() -> None:
    from trainer.packing import balanced_rows

    assert balanced_rows([10, 20, 30], 60) == [[0, 1, 2]]  # they fit: one row, in order
    assert balanced_rows([10, 20, 30], 59) == [[2], [0, 1]]  # two rows, the longest first into the shortest
    rows = balanced_rows([50, 40, 30, 30, 20, 20, 10, 5], 70)
    assert len(rows) == 3 and sorted(i for row in rows for i in row) == list(range(8))
    loads = [sum([50, 40, 30, 30, 20, 20, 10, 5][i] for i in row) for row in rows]
    assert max(loads) - min(loads) <= 10 and all(row == sorted(row) for row in rows)
    assert balanced_rows([500, 400], 100) == [[0], [1]]  # never more rows than examples


def test_a_step_over_max_seq_length_runs_in_rows(
    tiny_model_dir: Path, smol_tokenizer: Any, sharp_model: Any, examples: TokenizedSet
) -> None:
    """A step's examples whose tokens pass max_seq_length: balanced rows, each padding-free (per-example positions,
    no attention mask), the padding at a row's end a sequence of its own with no labels; every example once."""
    from trainer.packing import PADDING_KEY

    length = _rows_length(examples)
    batch, trainer = _batch(tiny_model_dir, smol_tokenizer, sharp_model, examples, True, length)
    assert "attention_mask" not in batch
    n_rows, width = batch["input_ids"].shape
    real = sum(len(e.input_ids) for e in examples.examples)
    assert n_rows == 3 and batch[PADDING_KEY] == n_rows * width - real
    by_ids = {tuple(e.input_ids): e for e in examples.examples}
    found = []
    for r in range(n_rows):
        pos, ids, labels = (batch[k][r].tolist() for k in ("position_ids", "input_ids", "labels"))
        starts = [i for i, p in enumerate(pos) if p == 0]
        for s, e in zip(starts, [*starts[1:], width], strict=True):
            assert pos[s:e] == list(range(e - s))
            example = by_ids.get(tuple(ids[s:e]))
            if example is None:  # the row's padding: at its end, no labels
                assert e == width and set(labels[s:e]) == {-100}
                continue
            assert labels[s:e] == [-100, *_labels(example)[1:]]
            found.append(example)
    assert sorted(map(id, found)) == sorted(map(id, examples.examples))
    cu = batch["cu_seq_lens_q"].tolist()
    assert cu[0] == 0 and cu[-1] == n_rows * width
    assert batch["max_length_q"] == max(b - a for a, b in itertools.pairwise(cu))

    # A training step counts the step's real tokens, not its rows' width nor their padding.
    trainer.model.train()
    trainer.args.max_steps = 1
    trainer.train()
    assert trainer._total_train_tokens == real


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_attention_across_packed_examples(
    tiny_model_dir: Path, smol_tokenizer: Any, sharp_model: Any, examples: TokenizedSet, attn: str
) -> None:
    import torch

    model = copy.deepcopy(sharp_model)
    model.set_attn_implementation(attn)
    a, b, c = (torch.tensor(examples.examples[i].input_ids) for i in (0, 2, 1))
    gen = torch.Generator().manual_seed(1)
    b_other = torch.randint(100, 40000, b.shape, generator=gen)  # the middle example, perturbed
    spans = [(0, len(a)), (len(a), len(a) + len(b)), (len(a) + len(b), len(a) + len(b) + len(c))]

    def logits(middle: Any, packed: bool = True) -> Any:
        ids = torch.cat([a, middle, c])[None]
        # No KV cache, as in TRL's training and evaluation steps: transformers reads packed sequences from the
        # position ids only without one (with a cache, the row is a single causal sequence).
        kwargs: dict[str, Any] = {"use_cache": False}
        if packed:
            kwargs["position_ids"] = torch.cat([torch.arange(len(t)) for t in (a, middle, c)])[None]
        with torch.no_grad():
            return model(input_ids=ids, **kwargs).logits[0]

    def close(x: Any, y: Any) -> bool:
        return bool(torch.allclose(x, y, rtol=REL_TOL, atol=REL_TOL * float(y.abs().max())))

    base, perturbed = logits(b), logits(b_other)
    # Each example sees only itself: its logits are those it has alone, and the others' tokens do not matter.
    for t, (s, e) in zip((a, b, c), spans, strict=True):
        with torch.no_grad():
            alone = model(input_ids=t[None]).logits[0]
        assert close(base[s:e], alone)
    assert close(perturbed[spans[0][0] : spans[0][1]], base[spans[0][0] : spans[0][1]])
    assert close(perturbed[spans[2][0] : spans[2][1]], base[spans[2][0] : spans[2][1]])

    # Control: the same row without per-example positions is one causal sequence, and the perturbation reaches
    # the last example far beyond the tolerance: the checks above can fail.
    s, e = spans[2]
    diff = (logits(b, packed=False)[s:e] - logits(b_other, packed=False)[s:e]).abs().max()
    assert float(diff) > 1e3 * REL_TOL * float(base[s:e].abs().max())
