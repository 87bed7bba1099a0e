"""What both benchmarks build: the text they read, and the bert-base-sized and quick models.

Models come from a config with fixed random weights (speed does not depend on them), so nothing is
downloaded: "bert-base" is BertConfig()'s defaults with a WordPiece tokenizer learned from the text (a
text too small for 30,522 entries gives fewer: the model keeps its size, those ids never occur), and
"quick" is the quick preset's scratch:tiny model and vocabulary size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

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
