"""Top-k predictions for masked words: the `Predictor`, and the original project's two functions.

A `Predictor` holds a model (PyTorch or ONNX Runtime) and its tokenizer and answers many calls: one text
or a batch, the top-k candidates of each mask (as ``pipeline("fill-mask")`` gives them, to within
float rounding), candidates limited to given target words (several word pieces scored as one word),
or all masks filled together. Texts longer than the model reads are cut around their masks. A text
marks its masks with the tokenizer's mask token ("[MASK]" for BERT, "<mask>" for RoBERTa), or with
"[MASK]" for any model. Answers are kept in a bounded cache (cache.py), and one Predictor may serve
several threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..families import word_marker
from ..hardware import best_device
from .cache import CacheInfo, ResultCache
from .filters import CandidateFilters
from .inputs import (
    MaskedText,
    PredictionError,
    as_text_list,
    centred_window,
    chain_contents,
    check_count,
    encode_texts,
    special_frame,
    target_pieces,
)
from .joint import beam_fill
from .results import Candidate, Filling, Prediction, SentenceScore, candidates_for, fillings_for
from .scoring import SCORE_BATCH_SIZE, VARIANT, VARIANTS, score_texts
from .torch_backend import Backend, TorchBackend, padded

__all__ = [
    "BATCH_SIZE",
    "CACHE_SIZE",
    "EXAMPLE_SENTENCES",
    "CacheInfo",
    "Candidate",
    "Filling",
    "Prediction",
    "PredictionError",
    "Predictor",
    "SentenceScore",
]

# Texts per forward pass. Batches hold texts of similar length, so small ones waste little on padding,
# and on a CPU 16 short texts already make the matrix products efficient (64 per batch ran 1.4x slower).
BATCH_SIZE = 16
TOP_K = 5  # candidates per mask, as pipeline("fill-mask") gives
# Answers a Predictor keeps. A sentence's answer is a few kB (a score holds a record per token, a
# prediction top_k candidates per mask), so the cache stays within a few MB for sentences.
CACHE_SIZE = 1024

# The original project's three examples, then two in the style of the shipped sample text. Written with
# "[MASK]", which stands for the mask token of any model.
EXAMPLE_SENTENCES = (
    "The quick brown [MASK] jumps over the lazy dog.",
    "I love to eat [MASK] for breakfast.",
    "The capital of France is [MASK].",
    "She poured herself a cup of [MASK] and sat by the window.",
    "The sun rose over the [MASK] and the birds began to sing.",
)


class Predictor:
    """A masked-LM and its tokenizer, ready to answer many fill-in-the-mask questions.

    `model` is a PyTorch masked-LM of any BERT family (put in eval mode on `device`, by default where it
    is; `bf16` computes in bfloat16 where the hardware does so natively) or a backend such as
    `OnnxBackend`. Texts are batched `batch_size` at a time, similar lengths together. A text marks
    its masks with the tokenizer's mask token, or with "[MASK]", which stands for it in every model.

    The answers of `predict`, `score` and `fill` are cached per text and options, the `cache_size` most
    recently used (0: no cache), so a text asked again, or twice in one batch, runs the model once;
    `cache_info()` counts hits and misses, `cache_clear()` empties it. A cached answer is the one first
    computed, which can differ from a fresh one by float rounding (a batch's padding changes the sums).

    Threads: one Predictor may be called from several threads at once, each call answering as it would
    alone; the cache and the candidate filters take a lock, the model runs without one. The tokenizer is
    only read: a fast tokenizer changes itself when a call asks for other padding or truncation than
    the last (raising "Already borrowed" in a thread encoding meanwhile, huggingface/tokenizers#537),
    and every call here asks for none, so only the first, made while the Predictor is built, can change
    it. Code outside the Predictor that calls the same tokenizer with padding or truncation at the same
    time is not covered: give it its own tokenizer.

    >>> predictor = Predictor.load("bert_finetuned")
    >>> [c.token for c in predictor.predict("The capital of France is [MASK].", top_k=3).masks[0]]
    ['paris', 'lyon', 'london']
    """

    def __init__(
        self,
        model: torch.nn.Module | Backend,
        tokenizer,
        *,
        device: str | torch.device | None = None,
        bf16: bool = False,
        batch_size: int = BATCH_SIZE,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if getattr(tokenizer, "mask_token_id", None) is None:
            raise PredictionError("The tokenizer has no mask token: use the one saved with the model.")
        self.backend = TorchBackend(model, device, bf16) if isinstance(model, torch.nn.Module) else model
        self.tokenizer = tokenizer
        self.batch_size = check_count(batch_size, "batch_size", 2**20)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise PredictionError(f"cache_size must be a count, 0 for no cache; got {cache_size!r}.")
        self._cache = ResultCache(cache_size)
        self.prefix, self.suffix = special_frame(tokenizer)
        limit = min(self.backend.max_length, tokenizer.model_max_length or 10**9)
        self.window = limit - len(self.prefix) - len(self.suffix)  # text tokens the model reads at once
        if self.window < 1:
            frame = " and ".join(tokenizer.convert_ids_to_tokens(self.prefix + self.suffix))
            raise PredictionError(f"The model reads {limit} tokens, too few for a text and its {frame}.")
        self.mask, self.mask_id = tokenizer.mask_token, tokenizer.mask_token_id
        # How the vocabulary marks words: "Ġ"/"▁" on word starts (targets, the filled-in text), or
        # "##" on continuations (stripped before the punctuation check); None for a slow tokenizer.
        side, mark = word_marker(tokenizer) or (None, "")
        self.start_mark = mark if side == "starts" else None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if len(tokenizer) > self.backend.vocab_size:  # its last ids would index past the embeddings
            raise PredictionError(
                f"The tokenizer has {len(tokenizer)} tokens and the model {self.backend.vocab_size}: "
                "load the tokenizer saved with this model."
            )
        continuation_mark = mark if side == "continues" else ""
        self.filters = CandidateFilters(
            tokenizer, self.backend.vocab_size, self.backend.device, continuation_mark
        )

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        device=None,
        bf16: bool = False,
        batch_size: int = BATCH_SIZE,
        cache_size: int = CACHE_SIZE,
    ) -> Predictor:
        """A Predictor for a saved model folder, a Hub id, or an ONNX export (python -m mlm_helpers export).

        PyTorch models go to `device`, by default CUDA, then MPS, then the CPU. Raises ModelLoadError for a
        folder that does not exist or holds no masked-LM.
        """
        from .onnx_backend import is_onnx_folder, load_onnx

        if is_onnx_folder(name_or_path):
            if bf16 or device not in (None, "cpu"):
                raise PredictionError("An ONNX model runs in float32 on ONNX Runtime: drop device and bf16.")
            backend, tokenizer = load_onnx(name_or_path)
            return cls(backend, tokenizer, batch_size=batch_size, cache_size=cache_size)
        from ..modeling import load_model

        model, tokenizer = load_model(name_or_path)
        return cls(model, tokenizer, device=device or best_device(), bf16=bf16, batch_size=batch_size,
                   cache_size=cache_size)  # fmt: skip

    def predict(
        self,
        texts: str | list[str],
        top_k: int = TOP_K,
        *,
        targets: str | list[str] | None = None,
        exclude_special: bool = False,
        exclude_punctuation: bool = False,
        exclude_subwords: bool = False,
    ) -> Prediction | list[Prediction]:
        """The `top_k` candidates for each mask of each text, each mask predicted with the others masked.

        Gives one Prediction for a string, a list for a list. "[MASK]" in a text stands for the
        tokenizer's mask token. With `targets`, only those words are scored, each in the form it takes
        after a space ("Ġparis" for RoBERTa); a word of several pieces ("breakfasted": breakfast ##ed)
        fills one piece per mask, scored by the chain rule left to right. The `exclude_*` options leave
        out special tokens, punctuation, and pieces that only continue a word ("##ing" in WordPiece,
        "ing" without "Ġ" or "▁" elsewhere). Probabilities are always of the full vocabulary.

        >>> predictor.predict(["I ate [MASK].", "A [MASK] day."], top_k=2, exclude_punctuation=True)
        """
        items, single = as_text_list(texts, self.mask)
        top_k = check_count(top_k, "top_k", self.backend.vocab_size)
        pieces = None if targets is None else target_pieces(targets, self.tokenizer, self.start_mark)
        excluded = (exclude_special, exclude_punctuation, exclude_subwords)
        allowed = None if pieces else self.filters.allowed(*excluded)

        def run(texts: list[str]) -> list[tuple[str, tuple[tuple[Candidate, ...], ...]]]:
            encoded = self._encode(texts, batch=not single)
            logits = self._mask_logits([text.ids for text in encoded])
            if pieces is None:
                results = [self._top_k(text, rows, top_k, allowed) for text, rows in zip(encoded, logits)]
            else:
                results = self._targets(encoded, logits, pieces, top_k)
            return [(result.text, tuple(map(tuple, result.masks))) for result in results]  # kept immutable

        options = ("predict", top_k, pieces and tuple(pieces), exclude_special, exclude_punctuation,
                   exclude_subwords)  # fmt: skip
        answers = self._cached(items, options, run)
        results = [Prediction(text, [list(candidates) for candidates in masks]) for text, masks in answers]
        return results[0] if single else results

    def fill(
        self,
        texts: str | list[str],
        top_k: int = TOP_K,
        *,
        beam_width: int | None = None,
        exclude_special: bool = False,
        exclude_punctuation: bool = False,
        exclude_subwords: bool = False,
    ) -> list[Filling] | list[list[Filling]]:
        """Every mask of each text filled together: the best `top_k` whole texts, best first.

        A beam search (width `beam_width`, default `top_k`; 1 is greedy) fills the most confident mask
        first and predicts the others again given it. See joint.py. "[MASK]" stands for the tokenizer's
        mask token, as in `predict`.

        >>> predictor.fill("The [MASK] [MASK] jumps over the lazy dog.", top_k=1)[0].sequence
        """
        items, single = as_text_list(texts, self.mask)
        top_k = check_count(top_k, "top_k", self.backend.vocab_size)
        width = (
            top_k if beam_width is None else check_count(beam_width, "beam_width", self.backend.vocab_size)
        )
        allowed = self.filters.allowed(exclude_special, exclude_punctuation, exclude_subwords)
        if int(allowed.sum()) - int(allowed[self.mask_id]) < 1:  # the mask token never fills a mask
            raise PredictionError(f"The exclude_* options leave no token to fill a {self.mask} with.")
        log_probs = lambda contents: [rows.log_softmax(-1) for rows in self._mask_logits(contents)]

        def run(texts: list[str]) -> list[tuple[Filling, ...]]:
            return [
                tuple(fillings_for(self.tokenizer, text,
                                   beam_fill(text.ids, self.mask_id, log_probs, allowed, width, top_k)))
                for text in self._encode(texts, batch=not single)
            ]  # fmt: skip

        options = ("fill", top_k, width, exclude_special, exclude_punctuation, exclude_subwords)
        answers = self._cached(items, options, run)
        results = [list(fillings) for fillings in answers]
        return results[0] if single else results

    def score(
        self, texts: str | list[str], *, variant: str = VARIANT, batch_size: int = SCORE_BATCH_SIZE
    ) -> SentenceScore | list[SentenceScore]:
        """Each text's pseudo-log-likelihood: every token but the special ones masked in turn and scored.

        Gives one SentenceScore for a string, a list for a list: `pll`, `token_count`, `pppl` and each
        token's log-probability. `variant` "word-l2r" (Kauf & Ivanova 2023) also masks the pieces of the
        scored token's word to its right, "original" (Salazar et al. 2020) masks the token alone.
        `batch_size` masked copies go through the model at once. See scoring.py.

        >>> predictor.score("The cat sat on the mat.").pppl
        """
        frame = (self.prefix, self.suffix)
        run = lambda texts: score_texts(texts, self.backend, self.tokenizer, frame, self.window,
                                        variant=variant, batch_size=batch_size)  # fmt: skip
        if not texts or variant not in VARIANTS:  # no text, or no such variant: score_texts says so
            return run(texts)
        items, single = as_text_list(texts)
        check_count(batch_size, "batch_size", 2**20)  # refused also when every text is in the cache
        # A SentenceScore and its TokenScores are frozen and hold tuples: stored and handed out as they are.
        answer = lambda subset: [run(subset[0])] if single else run(subset)  # a list, as _cached wants
        results = self._cached(items, ("score", variant), answer)
        return results[0] if single else results

    def __call__(self, inputs: str | list[str], top_k: int = TOP_K, targets: str | list[str] | None = None):
        """``pipeline("fill-mask")``'s answer, in its form: a drop-in for ``fill_mask(inputs, top_k=...)``."""
        results = self.predict(inputs, top_k, targets=targets)
        if isinstance(results, Prediction):
            return results.as_pipeline()
        rows = [result.as_pipeline() for result in results]
        return rows[0] if len(rows) == 1 else rows  # as the pipeline answers a list of one text

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of the answer cache, as functools.lru_cache's cache_info()."""
        return self._cache.info()

    def cache_clear(self) -> None:
        """Forget every cached answer (they are also forgotten when the model's weights change)."""
        self._cache.clear()

    def _cached(self, items: list[str], options: tuple, run: Callable[[list[str]], list]) -> list:
        """The answer of each text: from the cache, or from one `run` over the texts it lacks.

        `run` answers a list of texts in order. Answers are dropped when the PyTorch model's weights
        have changed in place since they were computed (training on, load_state_dict), which torch
        counts in each tensor's version.
        """
        weights_version = getattr(self.backend, "weights_version", None)
        if weights_version is not None:
            self._cache.clear_unless(weights_version())

        def compute(positions: list[int]) -> list:
            subset = [items[p] for p in positions]
            try:
                return run(subset)
            except PredictionError:
                if len(subset) < len(items):  # say which text failed by its place in the whole call
                    run(items)
                raise

        return self._cache.answer([(text, *options) for text in items], compute)

    def _encode(self, texts: list[str], batch: bool) -> list[MaskedText]:
        return encode_texts(texts, self.tokenizer, self.window, batch, self.start_mark)

    def _mask_logits(self, contents: list[list[int]] | list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Logits [masks, vocab] at the mask tokens of each content, run in batches of similar length."""
        rows = []
        for ids in contents:
            masks = [i for i, t in enumerate(ids) if t == self.mask_id]
            start, stop = centred_window(len(ids), masks, self.window, mask=self.mask)
            rows.append([*self.prefix, *ids[start:stop], *self.suffix])
        results: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, attention = padded([rows[i] for i in chunk], self.pad_id)
            masked = (ids == self.mask_id) & attention.bool()
            logits = self.backend.logits(ids, attention, masked.flatten().nonzero().flatten())
            for i, part in zip(chunk, logits.split(masked.sum(dim=1).tolist())):
                results[i] = part
        return results

    def _top_k(self, text: MaskedText, logits: torch.Tensor, top_k: int, allowed: torch.Tensor) -> Prediction:
        probabilities = logits.softmax(dim=-1).masked_fill(~allowed, -1.0)
        values, ids = probabilities.topk(top_k, dim=-1)
        masks = []
        for j, (row_values, row_ids) in enumerate(zip(values.tolist(), ids.tolist())):
            scored = [((i,), p) for i, p in zip(row_ids, row_values) if p >= 0]  # fewer when filtered
            masks.append(candidates_for(self.tokenizer, text, j, scored))
        return Prediction(text.text, masks)

    def _targets(self, encoded: list[MaskedText], logits, pieces, top_k: int) -> list[Prediction]:
        """Score each target at each mask: one piece from the logits at hand, several by the chain rule."""
        chains = [chain_contents(t.ids, m, p, self.mask_id) for t in encoded for m in t.masks for p in pieces
                  if len(p) > 1]  # fmt: skip
        try:
            steps = iter(self._mask_logits([ids for chain in chains for ids in chain]))
        except PredictionError as error:
            raise PredictionError(
                f"A target of several pieces needs one {self.mask} per piece: {error}"
            ) from None
        results = []
        for text, rows in zip(encoded, logits):
            probabilities, masks = rows.softmax(dim=-1), []
            for j in range(len(text.masks)):
                scored = []
                for word in pieces:
                    if len(word) == 1:
                        scored.append((word, probabilities[j, word[0]].item()))
                    else:  # step i reads piece i at the first mask left, which is mask j
                        total = sum(next(steps)[j].log_softmax(-1)[piece].item() for piece in word)
                        scored.append((word, math.exp(total)))
                scored.sort(key=lambda item: -item[1])
                masks.append(candidates_for(self.tokenizer, text, j, scored[:top_k]))
            results.append(Prediction(text.text, masks))
        return results


def predict_top_k_masked_word(text: str, model, tokenizer, top_k: int = TOP_K) -> list[list[Candidate]]:
    """The `top_k` most likely tokens for each mask in `text`, most likely first.

    Returns one list of candidates per mask, in the order the masks appear. The text writes its masks
    as the tokenizer's mask token ("<mask>" for RoBERTa) or as "[MASK]", which works with every model.
    Each mask is predicted independently (the other masks stay masked), as in
    ``transformers.pipeline("fill-mask")``. A convenience over `Predictor`, which is faster for many
    calls; the model's training mode is kept.

    >>> [c.token for c in predict_top_k_masked_word("I love to eat [MASK].", model, tokenizer)[0]]
    ['it', 'them', 'breakfast', 'food', 'pizza']
    """
    if not isinstance(text, str):
        raise TypeError(f"Expected the text as a string, got {type(text).__name__}.")
    was_training = model.training
    try:
        return Predictor(model, tokenizer).predict(text, top_k).masks
    finally:
        model.train(was_training)


def predict_single_masked_word(text: str, model, tokenizer) -> str:
    """The single most likely token for the one mask ("[MASK]" or the tokenizer's own) in `text`.

    >>> predict_single_masked_word("The capital of France is [MASK].", model, tokenizer)
    'paris'
    """
    results = predict_top_k_masked_word(text, model, tokenizer, top_k=1)
    if len(results) != 1:
        raise PredictionError(
            f"The text holds {len(results)} {tokenizer.mask_token} tokens; predict_single_masked_word "
            "answers for exactly one. Use predict_top_k_masked_word for several."
        )
    return results[0][0].token
