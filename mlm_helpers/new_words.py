"""Domain vocabulary: whole words added to a tokenizer and its model before fine-tuning.

Text from a field the tokenizer was not trained on (legal, medical, historical) meets words it splits
into many pieces. Each new word becomes one vocabulary entry of the tokenizer's own model, in the form
its pipeline produces for a word after a space ("unearthly" for WordPiece, "Ġunearthly" for byte-level
BPE, "▁unearthly" for SentencePiece), so it is a whole word in every kind and decodes with its spacing.
(transformers' `add_tokens` would match it anywhere in the raw text, inside longer words too, and leave
byte-level BPE and SentencePiece a stray space token beside it.) The model's input embeddings and its
MLM decoder grow by one row per word, tied weights stay tied, and each new row starts as the mean of
the rows of the pieces the word was split into (as Fast Vocabulary Transfer does, Gee et al. 2022),
not as the mean of all rows, which tells the model nothing about the word.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from .config import ConfigError
from .families import BYTE_LEVEL_START, METASPACE_START

MIN_PIECES = 3  # --add-frequent-words considers the words split into at least this many pieces
UNIGRAM_MARGIN = 1e-3  # how much a new Unigram entry outscores the pieces it replaces (log-probability)


@dataclass(frozen=True)
class NewWord:
    """A word added to the vocabulary: its entry, and the ids of the pieces it was split into before."""

    entry: str  # the vocabulary entry, as the tokenizer's pipeline spells the word ("Ġunearthly")
    pieces: tuple[int, ...]


def read_word_list(path: str | Path) -> list[str]:
    """The words of a file, one per line; blank lines and repeats are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read --add-tokens {path}: {error}") from None
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def _backend(tokenizer) -> Tokenizer:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"{type(tokenizer).__name__} is a slow tokenizer: new words are added to a fast one (the model "
            "folder's tokenizer.json)."
        )
    return backend


def _entries(backend: Tokenizer, text: str) -> list[str]:
    """The words of `text` as the tokenizer's model sees them: normalized and pre-tokenized."""
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]


def plan_words(tokenizer, words: Iterable[str]) -> list[NewWord]:
    """The entries for `words` as each would appear after a space in running text. A word the tokenizer
    already holds whole is left out; one its pre-tokenizer splits ("x-ray" for BERT) cannot be one entry
    and is refused."""
    backend = _backend(tokenizer)
    planned: dict[str, NewWord] = {}
    for word in words:
        entries = _entries(backend, " " + word)
        if len(entries) != 1:
            raise ConfigError(
                f"{word!r} is split into {entries} before this tokenizer looks up its vocabulary, so it "
                "cannot become one entry: leave it out of --add-tokens, or give its parts."
            )
        pieces = tuple(token.id for token in backend.model.tokenize(entries[0]))
        if len(pieces) > 1:
            planned.setdefault(entries[0], NewWord(entries[0], pieces))
    return list(planned.values())


def frequent_split_words(texts: Iterable[str], tokenizer, count: int) -> list[NewWord]:
    """The `count` most frequent words of `texts` that the tokenizer splits into at least MIN_PIECES
    pieces, most frequent first (ties: alphabetical, so the same text gives the same words)."""
    backend = _backend(tokenizer)
    seen: Counter[str] = Counter()
    for text in texts:
        seen.update(_entries(backend, text))
    split: dict[str, tuple[int, ...]] = {}
    for entry in sorted(seen, key=lambda e: (-seen[e], e)):
        pieces = tuple(token.id for token in backend.model.tokenize(entry))
        if len(pieces) >= MIN_PIECES and _is_word(entry):
            split[entry] = pieces
            if len(split) == count:
                break
    return [NewWord(entry, pieces) for entry, pieces in split.items()]


def _is_word(entry: str) -> bool:
    """Letters (digits, hyphens, apostrophes inside), not punctuation glued on: "them." is not a word."""
    core = entry.lstrip(BYTE_LEVEL_START + METASPACE_START)
    inner = core.replace("-", "").replace("'", "")
    return inner.isalnum() and core[:1].isalpha() and core[-1:].isalnum()


def extend_tokenizer(tokenizer, words: Sequence[NewWord]):
    """A copy of `tokenizer` whose model's vocabulary ends with the new entries, ids from len(tokenizer)."""
    spec = json.loads(_backend(tokenizer).to_str())
    model, first = spec["model"], len(tokenizer)
    if model["type"] == "Unigram":
        # Ids are places in the list. A new entry scores a hair above the pieces it replaces, so the word
        # becomes that one entry, and any other text's best split changes only where it held those very
        # pieces in a row (a higher score would also cut longer words that start with it, "▁highest").
        if len(model["vocab"]) != first:
            raise ConfigError(
                "This tokenizer has tokens added after its vocabulary: new words cannot follow."
            )
        scores = [score for _, score in model["vocab"]]
        model["vocab"] += [
            [word.entry, sum(scores[i] for i in word.pieces) + UNIGRAM_MARGIN] for word in words
        ]
    elif model["type"] in ("WordPiece", "BPE"):
        model["vocab"].update({word.entry: first + index for index, word in enumerate(words)})
        if model["type"] == "BPE":
            # BPE builds a word by merging its pieces, and no merge makes a new entry: with ignore_merges
            # a word that is an entry is that entry. Other words still come out of their merges (their
            # merges end at their own entry; the tests check that on the shipped text).
            model["ignore_merges"] = True
    else:
        raise ConfigError(f"New words cannot be added to a {model['type']} tokenizer.")
    with tempfile.TemporaryDirectory() as folder:  # the saved form is what the model folder will hold
        tokenizer.save_pretrained(folder)
        (Path(folder) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        extended = AutoTokenizer.from_pretrained(folder)
    if len(extended) != first + len(words):
        raise ConfigError(f"The tokenizer did not take the new words ({len(extended)} entries).")
    return extended


def add_embedding_rows(model, words: Sequence[NewWord]) -> None:
    """Grow the model's input embeddings and MLM decoder by one row per new word, each row the mean of
    its pieces' rows (and the decoder's bias likewise); tied weights stay tied."""
    old = model.get_input_embeddings().weight.shape[0]
    with torch.random.fork_rng(devices=[]):  # the rows transformers draws are overwritten below
        model.resize_token_embeddings(old + len(words), mean_resizing=False)
    output = model.get_output_embeddings()
    with torch.no_grad():
        tables = [model.get_input_embeddings().weight]
        if output is not None and output.weight is not tables[0]:
            tables.append(output.weight)  # an untied decoder
        bias = getattr(output, "bias", None)
        for index, word in enumerate(words):
            pieces = torch.tensor(word.pieces)
            for table in tables:
                table[old + index] = table[pieces].mean(dim=0)
            if bias is not None:
                bias[old + index] = bias[pieces].mean()


def tokens_per_word(texts: Iterable[str], tokenizer) -> float:
    """Pieces per word over `texts`, words as the tokenizer's pre-tokenizer cuts them."""
    backend = _backend(tokenizer)
    pieces = words = 0
    for text in texts:
        entries = _entries(backend, text)
        words += len(entries)
        pieces += len(backend.encode(text, add_special_tokens=False).ids)
    return pieces / max(words, 1)
