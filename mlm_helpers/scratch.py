"""Models built from scratch: "scratch:<name>" makes a small model of a family from a config and
trains its kind of vocabulary on the run's own text (WordPiece for BERT, byte-level BPE for RoBERTa),
so the whole job runs with no download at all (the quick preset uses it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    BertTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from .config import SCRATCH_MODELS, ConfigError
from .families import FAMILIES, WORDPIECE_CONTINUATION

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")  # cls, sep, pad, unk, mask
MAX_ENDING = 5  # longest word ending, in characters, offered to the vocabulary as a continuation piece


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 512) -> BertTokenizer:
    """A lower-casing BERT WordPiece tokenizer whose vocabulary is learned from `texts`.

    The vocabulary holds the special tokens, every character seen (as a word start and as a "##"
    continuation), then the most frequent whole words and word endings ("##ing"), ties broken by the
    text, so the same text always gives the same vocabulary. We count pieces ourselves because
    `tokenizers`' WordPieceTrainer is not deterministic: its ids depend on hash-map order and so do its
    merges on ties (huggingface/tokenizers#1794), which would break bit-for-bit reproducible runs.

    The tokenizer is built from a `tokenizers` object: in transformers 5, `BertTokenizer(vocab_file=...)`
    ignores the file and yields a 5-token vocabulary, with which training "succeeds" at a loss near 0.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    if not words:
        raise ConfigError("The tokenizer learned no vocabulary: the training text is empty.")
    alphabet = sorted({char for word in words for char in word})
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        pieces[word] += count
        for start in range(max(1, len(word) - MAX_ENDING), len(word) - 1):
            pieces[WORDPIECE_CONTINUATION + word[start:]] += count
    base = SPECIAL_TOKENS + alphabet + [WORDPIECE_CONTINUATION + char for char in alphabet]
    ranked = sorted((p for p in pieces if p not in set(base)), key=lambda p: (-pieces[p], p))
    vocab = {token: index for index, token in enumerate(base + ranked[: max(0, vocab_size - len(base))])}

    backend = Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=WORDPIECE_CONTINUATION)
    )
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece(WORDPIECE_CONTINUATION)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return BertTokenizer(tokenizer_object=backend, do_lower_case=True, model_max_length=max_length)


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    max_length: int = 512,
    special_tokens: Sequence[str] = ROBERTA_TOKENS,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer as RoBERTa's, whose merges are learned from `texts`.

    `special_tokens` are (cls, sep, pad, unk, mask), RoBERTa's by default; they take the first ids.
    The mask token takes the space before it, as RoBERTa's does (`wrap_tokenizer`).
    BPE training, unlike WordPiece's, gives the same merges for the same text in every process.
    """
    cls, sep, *_ = special_tokens
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_ids_order(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if backend.get_vocab_size() <= len(special_tokens) + len(pre_tokenizers.ByteLevel.alphabet()):
        raise ConfigError("The tokenizer learned no vocabulary: the training text is empty.")
    backend.post_processor = processors.RobertaProcessing(
        (sep, backend.token_to_id(sep)), (cls, backend.token_to_id(cls))
    )
    return wrap_tokenizer(backend, special_tokens, max_length)


def special_ids_order(special_tokens: Sequence[str]) -> list[str]:
    """(cls, sep, pad, unk, mask) in the order their family gives them the first ids: RoBERTa's <s> 0,
    <pad> 1, </s> 2, <unk> 3; BERT-style vocabularies' padding and unknown tokens first; the mask last."""
    cls, sep, pad, unk, mask = special_tokens
    return [cls, pad, sep, unk, mask] if cls == "<s>" else [pad, unk, cls, sep, mask]


def wrap_tokenizer(
    backend: Tokenizer, special_tokens: Sequence[str], max_length: int
) -> PreTrainedTokenizerFast:
    """A trained `tokenizers` object as a transformers tokenizer with its special tokens (cls, sep, pad,
    unk, mask); the mask takes the space before it, as the Hub's RoBERTa, XLM-R and ModernBERT masks do."""
    cls, sep, pad, unk, mask = special_tokens
    backend.add_special_tokens([AddedToken(mask, lstrip=True, rstrip=False, special=True)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=cls,
        eos_token=sep,
        cls_token=cls,
        sep_token=sep,
        pad_token=pad,
        unk_token=unk,
        mask_token=mask,
        model_max_length=max_length,
    )


def scratch_tokenizer(name: str, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """The tokenizer of scratch model `name` ("tiny", "roberta-tiny", ...; see config.SCRATCH_MODELS),
    learned from `texts`: the same text gives the same tokenizer."""
    family, *_, vocab_size = SCRATCH_MODELS[name]
    if family == "roberta":
        return train_bpe_tokenizer(texts, vocab_size, max_length=512)
    return train_wordpiece_tokenizer(texts, vocab_size, max_length=512)


def scratch_model(name: str, tokenizer, seed: int) -> PreTrainedModel:
    """Scratch model `name`, freshly initialised for `tokenizer`; the same seed gives the same weights."""
    family, layers, hidden, heads, intermediate, _ = SCRATCH_MODELS[name]
    sizes = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
             "intermediate_size": intermediate, "vocab_size": len(tokenizer)}  # fmt: skip
    # RoBERTa's positions start after the padding id: 512 tokens need 514 positions.
    positions = 512 + (tokenizer.pad_token_id + 1 if FAMILIES[family].positions_after_padding else 0)
    config = AutoConfig.for_model(
        family,
        **sizes,
        max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        # A short run from scratch underfits rather than overfits: dropout would only slow it down.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching global state
        torch.manual_seed(seed)
        return AutoModelForMaskedLM.from_config(config)
