"""Shared fixtures: a WordPiece tokenizer trained on the shipped sample text, and tiny BERTs.

Nothing here touches the network: HF_HUB_OFFLINE is set before transformers is imported.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from mlm_helpers.config import sample_corpus_files
from mlm_helpers.scratch import train_wordpiece_tokenizer

REPO = Path(__file__).resolve().parents[1]


def sample_lines(limit: int | None = None) -> list[str]:
    lines = []
    for path in sample_corpus_files():
        lines += [
            line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    return lines[:limit] if limit else lines


@pytest.fixture(scope="session")
def tokenizer():
    return train_wordpiece_tokenizer(sample_lines(), vocab_size=1000)


def tiny_bert(vocab_size: int, seed: int = 0) -> BertForMaskedLM:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return BertForMaskedLM(config).eval()


@pytest.fixture
def model(tokenizer):
    return tiny_bert(len(tokenizer))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(sample_lines(600)) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Guess:
    """A stand-in for `Candidate`: the tables and figures read only a token and its probability."""

    token: str
    probability: float


def candidate(token: str, probability: float) -> Guess:
    return Guess(token, probability)


@pytest.fixture(scope="module")
def local_model(tmp_path_factory, tokenizer):
    """A tiny BERT folder with dropout on, so that resuming must restore the random-number state too."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    model = tiny_bert(len(tokenizer))
    model.config.hidden_dropout_prob = 0.1
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_file_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(sample_lines(400)) + "\n", encoding="utf-8")
    return path
