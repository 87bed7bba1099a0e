"""mlm_helpers: fine-tune BERT with masked language modeling and predict [MASK] words.

The public API, re-exported here so that ``from mlm_helpers import ...`` is all a notebook needs:

>>> from mlm_helpers import load_model, predict_top_k_masked_word
>>> model, tokenizer = load_model("bert_finetuned")
>>> predict_top_k_masked_word("The capital of France is [MASK].", model, tokenizer, top_k=3)

The notebook's tables, figures and widget live in `inspection`, `comparison`, `plots` and `interactive`,
imported from there: the tables need pandas, which only the ``notebook`` extra installs.

Names are imported when first used (PEP 562), so ``from mlm_helpers import Predictor`` loads the
prediction modules only: not the training stack (accelerate, datasets, torch.distributed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and the module that defines it.
_EXPORTS = {
    "ConfigError": "config",
    "TrainConfig": "config",
    "make_config": "config",
    "sample_corpus_files": "config",
    "make_examples": "data.examples",
    "cut_examples": "data.examples",
    "MaskedLanguageModelingDataset": "data.masking",
    "MaskingRule": "data.masking",
    "Vocabulary": "data.masking",
    "collate": "data.masking",
    "mask_text": "data.masking",
    "mask_tokens": "data.masking",
    "TextSource": "data.sources",
    "iter_texts": "data.sources",
    "open_stream": "data.sources",
    "HubUnreachableError": "hub",
    "SparseMaskedLM": "mlm_head",
    "ModelLoadError": "modeling",
    "load_model": "modeling",
    "PredictionError": "predict.inputs",
    "ExportResult": "predict.onnx_backend",
    "export_onnx": "predict.onnx_backend",
    "EXAMPLE_SENTENCES": "predict.predictor",
    "Predictor": "predict.predictor",
    "predict_single_masked_word": "predict.predictor",
    "predict_top_k_masked_word": "predict.predictor",
    "Candidate": "predict.results",
    "Filling": "predict.results",
    "Prediction": "predict.results",
    "SentenceScore": "predict.results",
    "TokenScore": "predict.results",
    "EvalMetrics": "training.loop",
    "evaluate": "training.loop",
    "RunResult": "training.outputs",
    "save_model": "training.outputs",
    "evaluate_config": "training.run",
    "build_model": "training.prepare",
    "prepare": "training.prepare",
    "train": "training.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlm_helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and editors see
    from .config import ConfigError, TrainConfig, make_config, sample_corpus_files
    from .data.examples import cut_examples, make_examples
    from .data.masking import (
        MaskedLanguageModelingDataset,
        MaskingRule,
        Vocabulary,
        collate,
        mask_text,
        mask_tokens,
    )
    from .data.sources import TextSource, iter_texts, open_stream
    from .hub import HubUnreachableError
    from .mlm_head import SparseMaskedLM
    from .modeling import ModelLoadError, load_model
    from .predict.inputs import PredictionError
    from .predict.onnx_backend import ExportResult, export_onnx
    from .predict.predictor import (
        EXAMPLE_SENTENCES,
        Predictor,
        predict_single_masked_word,
        predict_top_k_masked_word,
    )
    from .predict.results import Candidate, Filling, Prediction, SentenceScore, TokenScore
    from .training.loop import EvalMetrics, evaluate
    from .training.outputs import RunResult, save_model
    from .training.prepare import build_model, prepare
    from .training.run import evaluate_config, train
