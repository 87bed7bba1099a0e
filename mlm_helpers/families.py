"""What differs between masked-LM families and between tokenizer kinds, in one place.

Everything else in the package asks here instead of assuming BERT: where a model's MLM head is and how
to run it on selected hidden states, which modules are its layers (FSDP's shard units), the config
names its FLOPs count reads, which saved architectures hold a trained MLM head, how many positions
its examples may use; and, for tokenizers, how a vocabulary marks the pieces that continue a word.
"""

from __future__ import annotations

import json

import torch

# How vocabularies mark word pieces: WordPiece marks the pieces that continue a word ("##ing"),
# byte-level BPE (RoBERTa, ModernBERT) and SentencePiece (ALBERT, DeBERTa, XLM-R) the pieces that
# start one, "Ġ" (the byte-level form of a space) or "▁".
WORDPIECE_CONTINUATION = "##"
BYTE_LEVEL_START = "Ġ"
METASPACE_START = "▁"


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
