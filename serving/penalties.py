"""OpenAI's ``frequency_penalty``, ``presence_penalty`` and ``logit_bias`` as a transformers ``LogitsProcessor``.

Imports torch and transformers: the embedded engine imports this module only when a request adjusts its logits.

OpenAI's formula, for every token ``j`` of the vocabulary, before temperature and nucleus sampling::

    logits[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty
    logits[j] += logit_bias[j]

where ``count[j]`` is how often ``j`` was generated so far in this completion (the prompt does not count).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import LogitsProcessor


class OpenAIPenaltiesLogitsProcessor(LogitsProcessor):
    """Works on a batch as ``generate`` calls it: ``input_ids`` (batch, prompt + generated) and ``scores``
    (batch, vocab); the first ``prompt_len`` columns of ``input_ids`` are the prompt and are not counted.
    Returns new scores in float32 or wider (the input is left as it was)."""

    def __init__(
        self,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        logit_bias: Mapping[int, float] | None = None,
        prompt_len: int = 0,
    ):
        self.frequency_penalty = float(frequency_penalty)
        self.presence_penalty = float(presence_penalty)
        self.logit_bias = dict(logit_bias or {})
        self.prompt_len = prompt_len
        self._bias: torch.Tensor | None = None  # the dense bias row, built on first use for the scores' vocab/device

    def _bias_row(self, scores: torch.Tensor) -> torch.Tensor:
        if self._bias is None or self._bias.shape[0] != scores.shape[-1] or self._bias.device != scores.device:
            row = torch.zeros(scores.shape[-1], dtype=torch.float32, device=scores.device)
            ids = torch.tensor(list(self.logit_bias), dtype=torch.long, device=scores.device)
            row[ids] = torch.tensor(list(self.logit_bias.values()), dtype=torch.float32, device=scores.device)
            self._bias = row
        return self._bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.FloatTensor:
        out = scores.to(torch.promote_types(scores.dtype, torch.float32)).clone()
        generated = input_ids[:, self.prompt_len :]
        if (self.frequency_penalty or self.presence_penalty) and generated.shape[1] > 0:
            counts = torch.zeros(out.shape, dtype=out.dtype, device=out.device)
            ids = generated.to(device=out.device, dtype=torch.long)
            counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=out.dtype))
            out -= counts * self.frequency_penalty + (counts > 0).to(out.dtype) * self.presence_penalty
        if self.logit_bias:
            out += self._bias_row(out).to(out.dtype)
        return out  # type: ignore[return-value]
