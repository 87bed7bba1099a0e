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
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "ConfigError": "config",
    "TrainConfig": "config",
    "make_config": "config",
    "sample_corpus_files": "config",
    "TextSource": "data",
    "iter_texts": "data",
    "make_examples": "data",
    "open_stream": "data",
    "pack_blocks": "data",
    "HubUnreachableError": "hub",
    "MaskedLanguageModelingDataset": "masking",
    "MaskingRule": "masking",
    "Vocabulary": "masking",
    "collate": "masking",
    "mask_text": "masking",
    "mask_tokens": "masking",
    "ModelLoadError": "modeling",
    "SparseMaskedLM": "modeling",
    "ExportResult": "onnx_backend",
    "export_onnx": "onnx_backend",
    "Candidate": "prediction",
    "EXAMPLE_SENTENCES": "prediction",
    "Filling": "prediction",
    "Prediction": "prediction",
    "PredictionError": "prediction",
    "Predictor": "prediction",
    "predict_single_masked_word": "prediction",
    "predict_top_k_masked_word": "prediction",
    "RunResult": "run",
    "evaluate_config": "run",
    "prepare": "run",
    "train": "run",
    "EvalMetrics": "training",
    "evaluate": "training",
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
    from .checkpoint import load_model, save_model
    from .config import ConfigError, TrainConfig, make_config, sample_corpus_files
    from .data import TextSource, iter_texts, make_examples, open_stream, pack_blocks
    from .hub import HubUnreachableError
    from .masking import (
        MaskedLanguageModelingDataset,
        MaskingRule,
        Vocabulary,
        collate,
        mask_text,
        mask_tokens,
    )
    from .modeling import ModelLoadError, SparseMaskedLM
    from .onnx_backend import ExportResult, export_onnx
    from .prediction import (
        EXAMPLE_SENTENCES,
        Candidate,
        Filling,
        Prediction,
        PredictionError,
        Predictor,
        predict_single_masked_word,
        predict_top_k_masked_word,
    )
    from .run import RunResult, evaluate_config, prepare, train
    from .training import EvalMetrics, evaluate
