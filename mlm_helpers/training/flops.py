"""How much arithmetic training does: model FLOPs per token, and their share of a chip's peak (MFU).

Model-FLOPs utilisation (MFU, PaLM paper, Chowdhery et al. 2022, appendix B) is the share of a chip's
peak that the model's own arithmetic uses: tokens per second x FLOPs per token / peak FLOP/s. Work the
recipe wastes - padding, recomputation - does not count, which makes recipes comparable.

>>> from transformers import BertConfig
>>> per_token = training_flops_per_token(BertConfig(), seq_len=128, masked_fraction=0.15)
>>> mfu(tokens_per_second=1_000, flops_per_token=per_token, peak=100e9)  # doctest: +ELLIPSIS
5.45...
"""

from __future__ import annotations

from ..families import family_of

# Training costs three matmul passes per weight: the forward one, and in the backward pass one for the
# input's gradient and one for the weight's (Kaplan et al. 2020, "Scaling Laws", section 2.1). Each pass
# is 2 FLOPs (a multiply and an add) per weight per token.
TRAINING_FLOPS_PER_WEIGHT = 6


def training_flops_per_token(config, seq_len: int, masked_fraction: float | None) -> float | None:
    """Matmul FLOPs of one training step (forward and backward), per token of a `seq_len`-token block.

    Counted: the weight matrices of every encoder layer (query, key, value, attention output, the
    feed-forward layers: two, or three with a gate), the attention scores (QK^T) and the
    attention-weighted values over all `seq_len` keys, DeBERTa's relative-position scores, an embedding
    projection (ALBERT, ELECTRA) and the MLM head (its transform and the vocabulary projection). Not
    counted: embedding lookups (no matmul), biases, LayerNorm, softmax, GELU and the loss, a few percent
    of the total at BERT's sizes. The head runs on every token when `masked_fraction` is None (the full
    head), else on that share of the tokens only (the sparse head of `SparseMaskedLM`). The config's
    names come from the family registry; None for a model type it does not know.

    >>> from transformers import BertConfig
    >>> training_flops_per_token(BertConfig(), 512, None) / 1e9  # doctest: +ELLIPSIS
    0.71...
    """
    family = family_of(config)
    if family is None:
        return None
    hidden, layers, ffn = (getattr(config, name) for name in (family.width, family.depth, family.ffn))
    per_layer_weights = 4 * hidden * hidden + (3 if family.gated_ffn else 2) * hidden * ffn
    # Each token's query meets `seq_len` keys, and its output mixes `seq_len` values: 2 matmuls of
    # seq_len x hidden multiply-adds, with no weights of their own (bidirectional: no causal halving).
    per_layer_attention = 2 * seq_len * hidden + _relative_attention(config, seq_len, hidden)
    head_out = getattr(config, family.head_width) if family.head_width else hidden
    head_weights = hidden * head_out + head_out * config.vocab_size
    embedding = getattr(config, family.embedding_width) if family.embedding_width else hidden
    projection = embedding * hidden if embedding != hidden else 0
    head_share = 1.0 if masked_fraction is None else masked_fraction
    weights = layers * (per_layer_weights + per_layer_attention) + projection + head_share * head_weights
    return float(TRAINING_FLOPS_PER_WEIGHT * weights)


def _relative_attention(config, seq_len: int, hidden: int) -> float:
    """DeBERTa's disentangled attention, per token and layer: each of its content-to-position and
    position-to-content terms scores a token against 2 x span relative positions. Not counted: the
    projection of those positions' embeddings, made once per batch whatever its size (about 1% of a
    deberta-v3-base step at 64 sequences of 128 tokens)."""
    if not getattr(config, "relative_attention", False):
        return 0.0
    terms = [kind for kind in getattr(config, "pos_att_type", None) or [] if kind in ("c2p", "p2c")]
    buckets = getattr(config, "position_buckets", -1)
    span = buckets if buckets > 0 else getattr(config, "max_relative_positions", -1)
    if span < 1:
        span = config.max_position_embeddings
    return len(terms) * 2 * span * hidden


def mfu(tokens_per_second: float, flops_per_token: float, peak: float) -> float:
    """Model-FLOPs utilisation: the share of `peak` FLOP/s that the model's arithmetic uses.

    >>> mfu(tokens_per_second=2_000, flops_per_token=5e8, peak=1e13)
    0.1
    """
    return tokens_per_second * flops_per_token / peak
