"""The held-out pseudo-perplexity: a figure of whole sentences beside the masked-token metrics.

Salazar et al. 2020 ("Masked Language Model Scoring") define a corpus's pseudo-perplexity as
exp(-(sum of its sentences' PLL) / (tokens scored)). A run scores a fixed sample, the first
--pseudo-perplexity held-out texts, so that every evaluation (before, during and after training, and
`evaluate` on the saved model) scores the same texts. The scoring is `Predictor.score`'s, variant
word-l2r: a forward pass per token, so N short sentences cost a few hundred passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from ..config import ConfigError
from ..data.sources import iter_texts
from ..predict.inputs import PredictionError
from ..predict.predictor import Predictor
from ..predict.results import pseudo_perplexity
from ..predict.scoring import VARIANT, encode_for_scoring
from .distributed import gather_from_processes, whole_model


@dataclass(frozen=True)
class ScoringSample:
    """The held-out texts scored whole at each evaluation, and the tokenizer that reads them."""

    texts: tuple[str, ...]
    tokenizer: object

    @classmethod
    def of(cls, rows, tokenizer, count: int, text_column: str) -> ScoringSample:
        """The first `count` held-out texts with a token to score: a text of special tokens alone (an
        emoji that reads as "[UNK]") has none, and is passed over rather than stop the run."""
        if count and not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                "--pseudo-perplexity scores words (word-l2r) by the word boundaries of a fast tokenizer, "
                "and this model's tokenizer is a slow one: give --pseudo-perplexity 0."
            )
        texts: list[str] = []
        for text in iter_texts(rows, text_column):
            if len(texts) == count:
                break
            try:
                encode_for_scoring([text], tokenizer, VARIANT, batch=False)
            except PredictionError:
                continue
            texts.append(text)
        return cls(tuple(texts), tokenizer)

    def pseudo_perplexity(self, model: torch.nn.Module, accelerator: Accelerator) -> float | None:
        """The texts' pseudo-perplexity under `model`, the same figure on every process; None without
        texts (--pseudo-perplexity 0, or no held-out rows).

        The main process scores, in float32 whatever the training precision, with the model in eval mode
        and its training mode restored after; the others wait for its figure in a gather, as they wait
        for its clock in `Session.end_step`. Under FSDP every process first helps gather the weights.
        """
        if not self.texts:
            return None
        whole = whole_model(model, accelerator)
        value = None
        if accelerator.is_main_process:
            was_training = whole.training
            try:  # scoring draws no random numbers: the run's are the same with or without it
                scores = Predictor(whole, self.tokenizer, cache_size=0).score(list(self.texts))
            finally:
                whole.train(was_training)
            value = pseudo_perplexity(math.fsum(s.pll for s in scores), sum(s.token_count for s in scores))
        return gather_from_processes(accelerator, value)[0]
