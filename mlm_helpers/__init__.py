"""mlm_helpers: fine-tune BERT with masked language modeling and predict [MASK] words.

The public API, re-exported here so that ``from mlm_helpers import ...`` is all a notebook needs:

>>> from mlm_helpers import load_model, predict_top_k_masked_word
>>> model, tokenizer = load_model("bert_finetuned")
>>> predict_top_k_masked_word("The capital of France is [MASK].", model, tokenizer, top_k=3)

The notebook's tables, figures and widget live in `inspection`, `comparison`, `plots` and `interactive`,
imported from there: the tables need pandas, which only the ``notebook`` extra installs.
"""

from .checkpoint import load_model, save_model
from .config import ConfigError, TrainConfig, make_config, sample_corpus_files
from .data import TextSource, iter_texts, make_examples, open_stream, pack_blocks
from .hub import HubUnreachableError
from .masking import MaskedLanguageModelingDataset, MaskingRule, Vocabulary, collate, mask_text, mask_tokens
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

__all__ = [
    "EXAMPLE_SENTENCES",
    "Candidate",
    "ConfigError",
    "EvalMetrics",
    "ExportResult",
    "Filling",
    "HubUnreachableError",
    "MaskedLanguageModelingDataset",
    "MaskingRule",
    "ModelLoadError",
    "Prediction",
    "PredictionError",
    "Predictor",
    "RunResult",
    "SparseMaskedLM",
    "TextSource",
    "TrainConfig",
    "Vocabulary",
    "collate",
    "evaluate",
    "evaluate_config",
    "export_onnx",
    "iter_texts",
    "load_model",
    "make_config",
    "make_examples",
    "mask_text",
    "mask_tokens",
    "open_stream",
    "pack_blocks",
    "predict_single_masked_word",
    "predict_top_k_masked_word",
    "prepare",
    "sample_corpus_files",
    "save_model",
    "train",
]
