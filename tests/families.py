"""Tiny models of every family the package supports, with tokenizers of each family's kind.

Each tokenizer is trained offline with `tokenizers` on the shipped sample text: WordPiece for BERT,
DistilBERT and ELECTRA, byte-level BPE for RoBERTa and ModernBERT, SentencePiece-style Unigram for
ALBERT, DeBERTa-v2 and XLM-R, each with the special tokens its family uses ("[MASK]" or "<mask>", which
takes the space before it as the Hub's do). Each model is a 2-layer random one built from its family's
config. Nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from mlm_helpers.scratch import (
    ROBERTA_TOKENS,
    special_ids_order,
    train_bpe_tokenizer,
    train_wordpiece_tokenizer,
    wrap_tokenizer,
)

from .conftest import sample_lines

FAMILIES = ("bert", "roberta", "distilbert", "albert", "electra", "deberta-v2", "modernbert", "xlm-roberta")
WORDPIECE, BPE, UNIGRAM = (
    ("bert", "distilbert", "electra"),
    ("roberta", "modernbert"),
    ("albert", "deberta-v2"),
)
BERT_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")  # cls, sep, pad, unk, mask
SPECIAL_TOKENS = {
    "roberta": ROBERTA_TOKENS,
    "modernbert": BERT_TOKENS,
    "albert": ("[CLS]", "[SEP]", "<pad>", "<unk>", "[MASK]"),
    "deberta-v2": BERT_TOKENS,
    "xlm-roberta": ROBERTA_TOKENS,
}
VOCAB_SIZE = 1000
# The config names of each family's dropout rates: 0 in these models unless a test sets them.
DROPOUT_RATES = {family: ("hidden_dropout_prob", "attention_probs_dropout_prob") for family in FAMILIES} | {
    "distilbert": ("dropout", "attention_dropout"),
    "modernbert": ("attention_dropout", "mlp_dropout", "embedding_dropout"),
}
MAX_LENGTH = 128


@functools.cache
def family_tokenizer(family: str):
    """The family's kind of tokenizer, trained on the sample text; built once per test session."""
    if family in WORDPIECE:
        return train_wordpiece_tokenizer(sample_lines(), vocab_size=VOCAB_SIZE, max_length=MAX_LENGTH)
    if family in BPE:
        return train_bpe_tokenizer(sample_lines(), VOCAB_SIZE, MAX_LENGTH, SPECIAL_TOKENS[family])
    return unigram_tokenizer(SPECIAL_TOKENS[family])


def unigram_tokenizer(special_tokens: tuple[str, ...]) -> PreTrainedTokenizerFast:
    """A SentencePiece-style Unigram tokenizer ("▁" starts a word), as ALBERT's, DeBERTa's and XLM-R's."""
    cls, sep, _, unk, _ = special_tokens
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_ids_order(special_tokens),
        unk_token=unk,
        show_progress=False,
    )
    backend.train_from_iterator(sample_lines(), trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )
    return wrap_tokenizer(backend, special_tokens, MAX_LENGTH)


def family_config(family: str, **changes):
    tokenizer = family_tokenizer(family)
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    # RoBERTa's positions start after the padding id: 128 tokens need 128 + pad + 1 positions.
    offset = tokenizer.pad_token_id + 1 if family in ("roberta", "xlm-roberta") else 0
    common = {"max_position_embeddings": MAX_LENGTH + offset, **ids}
    no_dropout = {name: 0.0 for name in DROPOUT_RATES[family]}
    if family == "distilbert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}
        return transformers.DistilBertConfig(**sizes, **common, **no_dropout | changes)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if family == "modernbert":
        specials = {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
        specials |= {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}
        return transformers.ModernBertConfig(**sizes, **specials, **common, **no_dropout | changes)
    narrow = {"embedding_size": 16} if family in ("albert", "electra") else {}
    return transformers.AutoConfig.for_model(family, **sizes, **narrow, **common, **no_dropout | changes)


def family_model(family: str, seed: int = 0, **changes):
    """A 2-layer random masked-LM of the family, in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return transformers.AutoModelForMaskedLM.from_config(family_config(family, **changes)).eval()


def save_family(family: str, folder: Path, seed: int = 0) -> Path:
    """A model folder as save_pretrained writes it, for the CLI and `load_model`."""
    family_model(family, seed).save_pretrained(folder)
    family_tokenizer(family).save_pretrained(folder)
    return folder
