"""Getting a masked-LM model and its tokenizer: from the Hub, from a local folder, or built from scratch.

"scratch:<size>" builds a small BERT from a config and trains a WordPiece vocabulary on the run's own
text, so the whole job runs with no download at all (the quick preset uses it).
"""

from __future__ import annotations

import pickle
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    PreTrainedModel,
)

from .config import SCRATCH_PREFIX, SCRATCH_SIZES, ConfigError
from .hub import hub_reachable, require_hub

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining")  # saved with a trained MLM head
MAX_ENDING = 5  # longest word ending, in characters, offered to the vocabulary as a "##" piece


class ModelLoadError(ConfigError):
    """A model folder or id that cannot be loaded as a masked-LM model."""


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
            pieces["##" + word[start:]] += count
    base = SPECIAL_TOKENS + alphabet + ["##" + char for char in alphabet]
    ranked = sorted((p for p in pieces if p not in set(base)), key=lambda p: (-pieces[p], p))
    vocab = {token: index for index, token in enumerate(base + ranked[: max(0, vocab_size - len(base))])}

    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return BertTokenizer(tokenizer_object=backend, do_lower_case=True, model_max_length=max_length)


def build_scratch_model(size: str, vocab_size: int, seed: int) -> BertForMaskedLM:
    """A freshly initialised small BERT; the same seed gives the same weights."""
    layers, hidden, heads, intermediate, _ = SCRATCH_SIZES[size]
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        pad_token_id=SPECIAL_TOKENS.index("[PAD]"),
        # A short run from scratch underfits rather than overfits: dropout would only slow it down.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching global state
        torch.manual_seed(seed)
        return BertForMaskedLM(config)


def scratch_vocab_size(model: str) -> int:
    return SCRATCH_SIZES[model[len(SCRATCH_PREFIX) :]][4]


def load_model(name_or_path: str | Path, max_length: int | None = None) -> tuple[PreTrainedModel, object]:
    """Load a masked-LM model and its tokenizer from a local folder or a Hub id, with clear errors.

    With `max_length`, the model's position limit is checked from its config, before the weights load.

    >>> model, tokenizer = load_model("bert_finetuned")
    """
    name_or_path = str(name_or_path)
    local_only = _resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only)
        architectures = getattr(config, "architectures", None) or []
        if architectures and not any(a.endswith(MLM_ARCHITECTURES) for a in architectures):
            raise ModelLoadError(
                f"{name_or_path} is a {architectures[0]}, not a masked-language model: its MLM head would "
                "start from random weights. Use a model trained with one, such as bert-base-uncased."
            )
        if max_length is not None:
            check_max_length(config, max_length)
        if Path(name_or_path).is_dir():  # before the weights: a folder without its tokenizer is no use
            check_tokenizer_files(Path(name_or_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForMaskedLM.from_pretrained(name_or_path, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_only)
    except ConfigError:
        raise
    except pickle.UnpicklingError:
        # transformers loads .bin weights with torch.load(weights_only=True): a pickle that would run
        # code is stopped before it runs. We never retry without that protection.
        raise ModelLoadError(
            f"Refusing to load {name_or_path}: its weights file holds more than tensors and could run code "
            "when loaded. Use a model saved as safetensors, or one you trust re-saved with save_pretrained."
        ) from None
    except ValueError as error:
        raise ModelLoadError(
            f"{name_or_path} is not a masked-language model: use a model with an MLM head, such as "
            f"bert-base-uncased. ({error})"
        ) from None
    except OSError as error:
        raise ModelLoadError(f"Cannot load the model {name_or_path!r}: {error}") from None
    except SafetensorError as error:  # a truncated or corrupted weights file
        weights = Path(name_or_path) / "model.safetensors"
        where = weights if weights.is_file() else f"the weights of {name_or_path}"
        raise ModelLoadError(
            f"{where} is damaged or incomplete ({error}): save or copy the model again."
        ) from None
    if tokenizer.mask_token_id is None:
        raise ModelLoadError(f"The tokenizer of {name_or_path} has no [MASK] token.")
    return model, tokenizer


# The files a saved tokenizer may consist of: fast (tokenizer.json), WordPiece, byte-level BPE,
# SentencePiece. Without any of them transformers builds a 5-token tokenizer and every answer is noise.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")  # fmt: skip


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a model folder saved without its tokenizer."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} holds no tokenizer (looked for {', '.join(TOKENIZER_FILES)}): save it beside the "
            f"model with tokenizer.save_pretrained({str(folder)!r}), or use a folder that has one."
        )


def model_source(name_or_path: str) -> str:
    """How a model that is not on this disk is named in a message: as a Hub id, noting that no folder
    of that name exists (a mistyped path reads as a Hub id too)."""
    return f"the model {name_or_path!r} (there is no folder of that name in {Path.cwd()}, so it is a Hub id)"


def _resolve(name_or_path: str) -> bool:
    """Check that the model can be had; True when it must come from local files only."""
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name_or_path} is a folder but holds no config.json: point --model at a folder "
                "written by save_pretrained (such as bert_finetuned/), or at a Hub id."
            )
        return True
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"Model folder not found: {name_or_path}. Check the path.")
    if hub_reachable():
        return False
    try:  # offline, a model already in the Hugging Face cache still loads
        AutoConfig.from_pretrained(name_or_path, local_files_only=True)
        return True
    except OSError:
        require_hub(model_source(name_or_path))
    return True


def check_max_length(config, max_length: int) -> None:
    """Fail early when examples would be longer than the model's position embeddings."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ConfigError(f"--max-length {max_length} is above this model's limit of {limit} tokens.")


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (non-reentrant
    checkpointing, which keeps dropout's random draws the same in the recomputation)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
