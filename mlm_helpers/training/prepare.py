"""What a run reads, made ready before any training: the model and tokenizer, this process's training
batches, and the held-out batches. Everything that can fail on bad input fails here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from ..config import SCRATCH_PREFIX, ConfigError, TrainConfig
from ..data.batches import CheckpointSchedule, StreamBatches, TrackedBatches
from ..data.examples import make_examples
from ..data.masking import MaskedLanguageModelingDataset, MaskingRule, Vocabulary, collate
from ..data.sources import TextSource, iter_texts, open_stream, split_stream
from ..data.stream import ExampleStream
from ..hub import in_hub_cache, require_hub
from ..modeling import check_max_length, check_trainable, family_note, load_model, model_source
from ..new_words import (
    add_embedding_rows,
    extend_tokenizer,
    frequent_split_words,
    plan_words,
    read_word_list,
    tokens_per_word,
)
from ..scratch import scratch_model, scratch_tokenizer
from .distributed import (
    shard_rows,
)
from .pseudo_perplexity import ScoringSample

# Held-out examples are masked once with this seed, whatever the run's seed, so that evaluations
# before and after training, and across runs, score exactly the same tokens.
EVAL_SEED = 20_240_601
TOKENIZER_TRAINING_ROWS = 200_000  # enough text for a small vocabulary; bounds the time on big streams


def masking_rule(cfg: TrainConfig) -> MaskingRule:
    return MaskingRule(
        cfg.mlm_probability, cfg.mask_replace_prob, cfg.random_replace_prob, cfg.whole_word_masking
    )


def load_model_for(
    cfg: TrainConfig, train_rows, held_out, report: bool = True
) -> tuple[torch.nn.Module, object]:
    """The model and tokenizer a config names, with its new words if it adds any; a scratch model gets a
    vocabulary trained on `train_rows`. `report`: print the new words (the main process does)."""
    if cfg.is_scratch:
        texts = islice(iter_texts(train_rows, cfg.text_column), TOKENIZER_TRAINING_ROWS)
        name = cfg.model[len(SCRATCH_PREFIX) :]
        tokenizer = scratch_tokenizer(name, texts)
        model = scratch_model(name, tokenizer, seed=cfg.seed)
        check_max_length(model.config, cfg.max_length)
    else:
        model, tokenizer = load_model(cfg.model, max_length=cfg.max_length)
    check_trainable(model, cfg.gradient_checkpointing)
    if report and (note := family_note(model.config)):
        print(note)
    if cfg.add_tokens or cfg.add_frequent_words:
        tokenizer = add_new_words(cfg, model, tokenizer, train_rows, held_out, report)
    return model, tokenizer


def add_new_words(cfg: TrainConfig, model, tokenizer, train_rows, held_out, report: bool):
    """The words of --add-tokens, then the --add-frequent-words, added to the tokenizer and the model
    (see new_words.py); returns the extended tokenizer. The same config and text give the same words,
    so a resumed run rebuilds exactly the vocabulary of the run it continues."""
    words = plan_words(tokenizer, read_word_list(cfg.add_tokens)) if cfg.add_tokens else []
    if cfg.add_frequent_words:
        texts = islice(iter_texts(train_rows, cfg.text_column), TOKENIZER_TRAINING_ROWS)
        given = {word.entry for word in words}
        words += [
            w for w in frequent_split_words(texts, tokenizer, cfg.add_frequent_words) if w.entry not in given
        ]
    if not words:
        if report:
            print("No word to add: the tokenizer holds each given word whole, and splits no frequent one.")
        return tokenizer
    held_texts = list(iter_texts(held_out, cfg.text_column))
    before = tokens_per_word(held_texts, tokenizer)
    extended = extend_tokenizer(tokenizer, words)
    add_embedding_rows(model, words)
    if report:
        shown = ", ".join(
            f"{tokenizer.convert_tokens_to_string([w.entry]).strip()} ({len(w.pieces)})" for w in words
        )
        print(f"Added {len(words)} words to the vocabulary (pieces each was split into): {shown}.")
        after = tokens_per_word(held_texts, extended)
        print(f"Tokens per word on the held-out text: {before:.3f} before, {after:.3f} after.")
    return extended


def eval_batches(rows, tokenizer, cfg: TrainConfig, vocab: Vocabulary) -> list[dict[str, torch.Tensor]]:
    """The held-out rows, tokenized like training data and masked once with EVAL_SEED."""
    texts = iter_texts(rows, cfg.text_column)
    examples = list(
        make_examples(
            texts, tokenizer, cfg.max_length, cfg.packing, drop_last=False, word_marks=cfg.whole_word_masking
        )
    )
    masked = list(
        MaskedLanguageModelingDataset(examples, vocab=vocab, rule=masking_rule(cfg), seed=EVAL_SEED)
    )
    pad = tokenizer.pad_token_id
    return [collate(masked[i : i + cfg.batch_size], pad) for i in range(0, len(masked), cfg.batch_size)]


def training_batches(rows, tokenizer, vocab: Vocabulary, cfg: TrainConfig, rank: int = 0,
                     world_size: int = 1) -> TrackedBatches:  # fmt: skip
    """Process `rank`'s training batches: one stream per DataLoader worker (one without workers), each
    over its own share of the rows, masking its examples as examples of the whole run (see
    MaskedLanguageModelingDataset). Raises ConfigError if a share cannot fill one example."""
    per_process = max(cfg.data_workers, 1)
    streams = []
    for index in range(per_process):
        share, shares = rank * per_process + index, world_size * per_process
        examples = ExampleStream(shard_rows(rows, share, shares), cfg.text_column, tokenizer,
                                 cfg.max_length, cfg.packing, cfg.shuffle_buffer, cfg.seed,
                                 word_marks=cfg.whole_word_masking)  # fmt: skip
        start = examples.state_dict()
        next(iter(examples))  # fails here, not in a worker, if this share cannot fill one example
        examples.load_state_dict(start)
        streams.append(MaskedLanguageModelingDataset(
            examples, vocab=vocab, rule=masking_rule(cfg), seed=cfg.seed, rank=share, world_size=shares
        ))  # fmt: skip
    source = StreamBatches(streams, cfg.batch_size, tokenizer.pad_token_id, CheckpointSchedule.of(cfg))
    return TrackedBatches(source, cfg.data_workers, cfg.seed)


def build_model(cfg: TrainConfig) -> tuple[torch.nn.Module, object]:
    """The model and tokenizer a run of `cfg` trains, as `train` builds them (a scratch model learns
    its vocabulary from the training rows), without the data pipeline around them.

    >>> model, tokenizer = build_model(make_config("quick"))
    """
    held_out, train_rows = split_stream(
        open_stream(TextSource.from_config(cfg)), cfg.eval_size, cfg.text_column
    )
    return load_model_for(cfg, train_rows, held_out)


def prepare(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> Prepared:
    """Open the data and load the model: everything that can fail on bad input, before training.

    Local data is checked before any download; a Hub model's small config (and its length limit) is
    checked before its weights. Process `rank` of `world_size` gets its own share of the training rows
    and its own masks; the model, the tokenizer, the held-out batches and the texts scored for the
    pseudo-perplexity are the same in every process.
    With --num-epochs the training examples are counted first, and the config gets its steps.
    """
    source = TextSource.from_config(cfg)
    stream = open_stream(source) if source.data_files else None  # local files: no network needed
    needs = [f"the dataset {cfg.dataset!r}"] if stream is None else []
    if not (cfg.is_scratch or Path(cfg.model).exists() or in_hub_cache(cfg.model)):
        needs.append(model_source(cfg.model))
    if needs:
        require_hub(" and ".join(needs))  # one clear message, in seconds, when offline
    stream = stream or open_stream(source)
    held_out, train_rows = split_stream(stream, cfg.eval_size, cfg.text_column)
    if cfg.eval_size and next(iter(train_rows), None) is None:
        raise ConfigError(
            f"No text is left to train on: all {len(held_out)} rows of {source.describe()} went to the "
            f"held-out set (--eval-size {cfg.eval_size}). Lower --eval-size below the number of rows "
            "(a tenth of them is usual), or give more text."
        )
    model, tokenizer = load_model_for(cfg, train_rows, held_out, report=rank == 0)
    steps_per_epoch = None
    if cfg.num_epochs is not None:
        if not (source.data_files or split_size(stream, cfg.split)):
            raise ConfigError(
                f"--num-epochs needs text of known size, and {source.describe()} streams without one: give "
                "--max-steps instead, or train on local files."
            )
        examples = count_examples(train_rows, tokenizer, cfg)
        steps_per_epoch, cfg = steps_for_epochs(cfg, examples, world_size)
        if rank == 0:
            epochs = f"{cfg.num_epochs:g} epochs of {steps_per_epoch:,} steps ({examples:,} examples each)"
            print(f"{epochs}: {cfg.max_steps:,} steps.")
    vocab = Vocabulary.from_tokenizer(tokenizer)
    loader = training_batches(train_rows, tokenizer, vocab, cfg, rank, world_size)
    held = eval_batches(held_out, tokenizer, cfg, vocab)
    sample = ScoringSample.of(held_out, tokenizer, cfg.pseudo_perplexity, cfg.text_column)
    return Prepared(cfg, model, tokenizer, loader, held, sample, steps_per_epoch)


@dataclass
class Prepared:
    """What `prepare` made ready: the config (with its steps counted), the model and its tokenizer, this
    process's training batches, the held-out batches, and the held-out texts scored whole."""

    cfg: TrainConfig
    model: torch.nn.Module
    tokenizer: object
    loader: TrackedBatches
    held_out: list[dict[str, torch.Tensor]]
    scoring_sample: ScoringSample
    steps_per_epoch: int | None = None  # with --num-epochs


def split_size(stream, split: str) -> int | None:
    """The number of rows of a Hub split, when the dataset's metadata knows it."""
    splits = getattr(getattr(stream, "info", None), "splits", None) or {}
    info = splits.get(split)
    return getattr(info, "num_examples", None) or None


def count_examples(rows, tokenizer, cfg: TrainConfig) -> int:
    """The training examples of one pass over `rows`, cut as the training stream cuts them."""
    texts = iter_texts(rows, cfg.text_column)
    return sum(1 for _ in make_examples(texts, tokenizer, cfg.max_length, cfg.packing))


def steps_for_epochs(cfg: TrainConfig, examples: int, world_size: int) -> tuple[int, TrainConfig]:
    """Steps per epoch, and the config with the run's steps: --num-epochs of them, or --max-steps if
    fewer. An epoch is counted over all processes together (each reads its share of the rows)."""
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps * world_size
    steps_per_epoch = examples // per_step
    if steps_per_epoch < 1:
        raise ConfigError(
            f"The training text makes {examples} examples, fewer than the {per_step} of one step: use more "
            "text, or a smaller --batch-size or --gradient-accumulation-steps."
        )
    steps = math.ceil(cfg.num_epochs * steps_per_epoch)
    return steps_per_epoch, cfg.replace(max_steps=min(steps, cfg.max_steps) if cfg.max_steps else steps)
