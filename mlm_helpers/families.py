"""What differs between masked-LM families and between tokenizer kinds, in one place.

Everything else in the package asks here instead of assuming BERT: where a model's MLM head is and how
to run it on selected hidden states, which modules are its layers (FSDP's shard units), the config
names its FLOPs count reads, which saved architectures hold a trained MLM head, how many positions
its examples may use; and, for tokenizers, how a vocabulary marks the pieces that continue a word.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import torch

# How vocabularies mark word pieces: WordPiece marks the pieces that continue a word ("##ing"),
# byte-level BPE (RoBERTa, ModernBERT) and SentencePiece (ALBERT, DeBERTa, XLM-R) the pieces that
# start one, "Ġ" (the byte-level form of a space) or "▁".
WORDPIECE_CONTINUATION = "##"
BYTE_LEVEL_START = "Ġ"
METASPACE_START = "▁"
MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining")  # the architectures saved with a trained MLM head


def _components(tokenizer) -> list[dict]:
    """The fast tokenizer's model, pre-tokenizer and decoder as JSON, sequences flattened."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return []
    spec = json.loads(backend.to_str())
    found, pending = [], [spec.get("model"), spec.get("pre_tokenizer"), spec.get("decoder")]
    while pending:
        part = pending.pop()
        if isinstance(part, dict):
            found.append(part)
            pending += part.get("pretokenizers", []) + part.get("decoders", [])
    return found


def word_marker(tokenizer) -> tuple[str, str] | None:
    """How the tokenizer's vocabulary marks word boundaries: ("continues", "##") when continuation
    pieces carry the mark, ("starts", "Ġ") or ("starts", "▁") when word starts do; None for a slow
    tokenizer or a kind we do not know."""
    for part in _components(tokenizer):
        kind = part.get("type")
        if kind == "WordPiece":
            return "continues", part.get("continuing_subword_prefix") or part.get("prefix") or "##"
        if kind == "Metaspace":
            return "starts", part.get("replacement", METASPACE_START)
        if kind == "ByteLevel":
            return "starts", BYTE_LEVEL_START
    return None


def continuation_pieces(tokenizer) -> torch.Tensor:
    """bool[len(tokenizer)]: the vocabulary entries that can only continue a word ("##ing" in
    WordPiece; in BPE and SentencePiece, a piece without the word-start mark that begins with a
    letter or digit: "ing", not ","). Special tokens never do. Raises ValueError when the tokenizer
    does not say how it marks words (a slow tokenizer)."""
    marker = word_marker(tokenizer)
    if marker is None:
        raise ValueError(
            f"{type(tokenizer).__name__} does not say where its words start: use the model's fast "
            "tokenizer (AutoTokenizer.from_pretrained gives one when the folder has tokenizer.json)."
        )
    side, mark = marker
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if side == "continues":
        flags = [token.startswith(mark) for token in tokens]
    else:
        flags = [not token.startswith(mark) and token[:1].isalnum() for token in tokens]
    table = torch.tensor(flags, dtype=torch.bool)
    table[list(tokenizer.all_special_ids)] = False
    return table


@dataclass(frozen=True)
class Family:
    """How one masked-LM family is built: its head, its layers, and the config names of its sizes."""

    head: Callable[[Any, torch.Tensor], torch.Tensor]  # (masked-LM model, hidden states) -> logits
    layers: str  # the encoder's layers, as an attribute path from the masked-LM model
    example: str  # a Hub checkpoint of the family with a trained MLM head, for messages
    width: str = "hidden_size"  # the config names the FLOPs count reads
    depth: str = "num_hidden_layers"
    ffn: str = "intermediate_size"
    gated_ffn: bool = False  # a gated feed-forward (GLU): its input matrix is twice as wide
    head_width: str | None = None  # the head transform's output width when it is not `width`
    embedding_width: str | None = None  # embeddings narrower than the layers, projected up to them
    mlm_architectures: tuple[str, ...] = MLM_ARCHITECTURES
    positions_after_padding: bool = False  # position ids start at pad_token_id + 1 (RoBERTa)


def _distilbert_head(model, hidden: torch.Tensor) -> torch.Tensor:
    transformed = model.vocab_layer_norm(model.activation(model.vocab_transform(hidden)))
    return model.vocab_projector(transformed)


def _deberta_head(model, hidden: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "lm_predictions"):  # DeBERTa-v2 configs with legacy=False
        return model.lm_predictions(hidden, model.deberta.embeddings.word_embeddings)
    return model.cls(hidden)


_ROBERTA = Family(
    head=lambda model, hidden: model.lm_head(hidden),
    layers="roberta.encoder.layer",
    example="roberta-base",
    positions_after_padding=True,
)

FAMILIES: dict[str, Family] = {  # keyed by config.model_type
    "bert": Family(
        head=lambda model, hidden: model.cls(hidden), layers="bert.encoder.layer", example="bert-base-uncased"
    ),
    "roberta": _ROBERTA,
    "xlm-roberta": dataclasses.replace(_ROBERTA, example="xlm-roberta-base"),
    "camembert": dataclasses.replace(_ROBERTA, example="almanach/camembert-base"),
    "distilbert": Family(
        head=_distilbert_head,
        layers="distilbert.transformer.layer",
        example="distilbert-base-uncased",
        width="dim",
        depth="n_layers",
        ffn="hidden_dim",
    ),
    "albert": Family(  # one group of layers, shared by all of them: the group is the shard unit
        head=lambda model, hidden: model.predictions(hidden),
        layers="albert.encoder.albert_layer_groups",
        example="albert-base-v2",
        head_width="embedding_size",
        embedding_width="embedding_size",
    ),
    "electra": Family(  # its *ForPreTraining is the discriminator, with no MLM head: the generator has one
        head=lambda model, hidden: model.generator_lm_head(model.generator_predictions(hidden)),
        layers="electra.encoder.layer",
        example="google/electra-base-generator",
        head_width="embedding_size",
        embedding_width="embedding_size",
        mlm_architectures=("ForMaskedLM",),
    ),
    "deberta": Family(head=_deberta_head, layers="deberta.encoder.layer", example="microsoft/deberta-base"),
    "deberta-v2": Family(
        head=_deberta_head, layers="deberta.encoder.layer", example="microsoft/deberta-v3-base"
    ),
    "modernbert": Family(
        head=lambda model, hidden: model.decoder(model.head(hidden)),
        layers="model.layers",
        example="answerdotai/ModernBERT-base",
        gated_ffn=True,
    ),
}


def family_of(config) -> Family | None:
    """The family of a model config, or None for a model type this package does not know."""
    return FAMILIES.get(getattr(config, "model_type", None))


def encoder_layers(model) -> list[torch.nn.Module]:
    """The encoder's layers of a masked-LM model: the modules FSDP shards one by one. For a family
    we do not know, the longest list of modules in it."""
    family = family_of(model.config)
    if family is not None:
        return list(attrgetter(family.layers)(model))
    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def position_limit(config) -> int | None:
    """How many tokens an example of this model may hold: its position embeddings, less the offset
    of families whose positions start after the padding id (roberta-base: 514 - 2 = 512)."""
    limit = getattr(config, "max_position_embeddings", None)
    family = family_of(config)
    if limit is not None and family is not None and family.positions_after_padding:
        limit -= (config.pad_token_id or 0) + 1
    return limit
