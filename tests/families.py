"""Tiny models of every family the package supports, with tokenizers of each family's kind.

Each tokenizer is trained offline with `tokenizers` on the shipped sample text: WordPiece for BERT,
DistilBERT and ELECTRA, byte-level BPE for RoBERTa and ModernBERT, SentencePiece-style Unigram for
ALBERT, DeBERTa-v2 and XLM-R, each with the special tokens its family uses ("[MASK]" or "<mask>").
Each model is a 2-layer random one built from its family's config. Nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from mlm_helpers.modeling import train_wordpiece_tokenizer

from .conftest import sample_lines

FAMILIES = ("bert", "roberta", "distilbert", "albert", "electra", "deberta-v2", "modernbert", "xlm-roberta")
KIND = {"bert": "wordpiece", "distilbert": "wordpiece", "electra": "wordpiece", "roberta": "bpe",
        "modernbert": "bpe", "albert": "unigram", "deberta-v2": "unigram", "xlm-roberta": "unigram"}  # fmt: skip
# The special tokens of each family, in its own order: (cls, sep, pad, unk, mask).
ROBERTA_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")
BERT_SPECIALS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
SPECIALS = {"roberta": ROBERTA_SPECIALS, "xlm-roberta": ROBERTA_SPECIALS, "modernbert": BERT_SPECIALS,
            "albert": ("[CLS]", "[SEP]", "<pad>", "<unk>", "[MASK]"),
            "deberta-v2": ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")}  # fmt: skip
VOCAB_SIZE = 1000
MAX_LENGTH = 128


@functools.cache
def family_tokenizer(family: str):
    """The family's kind of tokenizer, trained on the sample text; built once per test session."""
    if KIND[family] == "wordpiece":
        return train_wordpiece_tokenizer(sample_lines(), vocab_size=VOCAB_SIZE, max_length=MAX_LENGTH)
    cls, sep, pad, unk, mask = SPECIALS[family]
    order = [cls, pad, sep, unk] if cls == "<s>" else [pad, unk, cls, sep]  # ids as the family has them
    if KIND[family] == "bpe":
        backend = Tokenizer(models.BPE(unk_token=None))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE, special_tokens=[*order, mask], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )  # fmt: skip
    else:
        backend = Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=VOCAB_SIZE, special_tokens=[*order, mask], unk_token=unk, show_progress=False
        )
    backend.train_from_iterator(sample_lines(), trainer)
    cls_id, sep_id = backend.token_to_id(cls), backend.token_to_id(sep)
    if KIND[family] == "bpe":
        backend.post_processor = processors.RobertaProcessing((sep, sep_id), (cls, cls_id))
    else:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, cls_id), (sep, sep_id)],
        )  # fmt: skip
    # The mask takes the space before it, as the Hub's RoBERTa, XLM-R and ModernBERT masks do.
    backend.add_special_tokens([AddedToken(mask, lstrip=True, rstrip=False, special=True)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, cls_token=cls, sep_token=sep, bos_token=cls, eos_token=sep,
        pad_token=pad, unk_token=unk, mask_token=AddedToken(mask, lstrip=True, rstrip=False),
        model_max_length=MAX_LENGTH,
    )  # fmt: skip


def family_config(family: str):
    tokenizer = family_tokenizer(family)
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    # RoBERTa's positions start after the padding id: 128 tokens need 128 + pad + 1 positions.
    positions = {"max_position_embeddings": MAX_LENGTH + (tokenizer.pad_token_id + 1 if family in
                                                           ("roberta", "xlm-roberta") else 0)}  # fmt: skip
    if family == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, dropout=0.0,
                                             attention_dropout=0.0, **positions, **ids)  # fmt: skip
    if family == "modernbert":
        specials = {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id,
                    "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}  # fmt: skip
        return transformers.ModernBertConfig(**size, **positions, **ids, **specials, attention_dropout=0.0,
                                             mlp_dropout=0.0, embedding_dropout=0.0)  # fmt: skip
    extra = {"embedding_size": 16} if family in ("albert", "electra") else {}
    config_class = transformers.AutoConfig.for_model(family).__class__
    return config_class(**size, **positions, **ids, **no_dropout, **extra)


def family_model(family: str, seed: int = 0):
    """A 2-layer random masked-LM of the family, in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return transformers.AutoModelForMaskedLM.from_config(family_config(family)).eval()


def save_family(family: str, folder: Path, seed: int = 0) -> Path:
    """A model folder as save_pretrained writes it, for the CLI and `load_model`."""
    family_model(family, seed).save_pretrained(folder)
    family_tokenizer(family).save_pretrained(folder)
    return folder
