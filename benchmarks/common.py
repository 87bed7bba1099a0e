"""What both benchmarks build: the text they read, and the bert-base-sized and quick models.

Models come from a config with fixed random weights (speed does not depend on them), so nothing is
downloaded: "bert-base" is BertConfig()'s defaults with a WordPiece tokenizer learned from the text (a
text too small for 30,522 entries gives fewer: the model keeps its size, those ids never occur), and
"quick" is the quick preset's scratch:tiny model and vocabulary size.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import partial
from itertools import chain
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

from mlm_helpers.config import make_config
from mlm_helpers.scratch import scratch_model, scratch_tokenizer, train_wordpiece_tokenizer

SIZES = ("bert-base", "quick")


def read_lines(path: Path) -> list[str]:
    """Non-blank lines of a .txt file or a folder of them, without Project Gutenberg's header and licence."""
    lines = []
    for file in sorted(path.glob("*.txt")) if path.is_dir() else [path]:
        text = file.read_text(encoding="utf-8-sig")
        start = re.search(r"^\*\*\* ?START OF.*$", text, flags=re.MULTILINE)
        end = re.search(r"^\*\*\* ?END OF.*$", text, flags=re.MULTILINE)
        text = text[start.end() if start else 0 : end.start() if end else len(text)]
        lines += [line.strip() for line in text.splitlines() if line.strip()]
    return lines


def build(size: str, lines: list[str]) -> tuple[Callable[[], BertForMaskedLM], object]:
    """A function giving fresh, identical copies of the model, and the tokenizer learned from the text."""
    if size == "bert-base":
        tokenizer = train_wordpiece_tokenizer(lines, vocab_size=BertConfig().vocab_size)

        def make() -> BertForMaskedLM:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return BertForMaskedLM(BertConfig())

        return make, tokenizer
    scratch = make_config("quick").model.split(":", 1)[1]  # "tiny"
    tokenizer = scratch_tokenizer(scratch, lines)
    return partial(scratch_model, scratch, tokenizer, 0), tokenizer


def sample_sentences(lines: list[str], count: int) -> list[str]:
    """The first `count` lines of 8 to 20 words: sentences of a usual length."""
    return [line for line in lines if 8 <= len(line.split()) <= 20][:count]


def round_robin(
    calls: dict[str, Callable[[], object]], repeats: int, warm_up: bool = False
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in turn so that a neighbour's load on a shared machine
    slows all of them alike (after one unmeasured call each, with `warm_up`)."""
    for call in calls.values() if warm_up else ():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times


def hf_recipe_loader(lines: list[str], tokenizer, block: int, batch_size: int) -> DataLoader:
    """run_mlm.py's recipe over `lines`: its tokenize_function and group_texts through datasets.map (each
    line with its [CLS] and [SEP], joined within each map batch of 1,000 lines and cut into blocks, the
    tail dropped), then DataCollatorForLanguageModeling's shuffled batches."""

    def tokenize(rows: dict) -> dict:
        return tokenizer(rows["text"], return_special_tokens_mask=True)

    def group_texts(rows: dict) -> dict:
        joined = {key: list(chain.from_iterable(values)) for key, values in rows.items()}
        usable = len(joined["input_ids"]) // block * block
        return {key: [ids[i : i + block] for i in range(0, usable, block)] for key, ids in joined.items()}

    text = datasets.Dataset.from_dict({"text": lines})
    blocks = text.map(tokenize, batched=True, remove_columns=["text"]).map(group_texts, batched=True)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    generator = torch.Generator().manual_seed(0)
    return DataLoader(blocks, batch_size=batch_size, shuffle=True, collate_fn=collator, generator=generator)
