"""Data pipeline speed: rows of text to masked 128-token batches, ours against Hugging Face's recipe.

    python benchmarks/data_throughput.py                          # the sample text shipped in the package
    python benchmarks/data_throughput.py ../shared/corpora --data-workers 0 1 2 --gpu-rate 5700

Both paths read the same rows, tokenize them with the same WordPiece tokenizer (learned from the text,
as bert-base-sized in the training benchmark) and give batches of `--batch-size` masked sequences of
`--block` tokens, ready for a model:

  ours: training.prepare.training_batches, the path `train` reads through: ExampleStream (tokenize,
        pack, shuffle buffer), MaskedLanguageModelingDataset (the masks), StreamBatches/TrackedBatches
        (collate, DataLoader workers with --data-workers N).
  Hugging Face: run_mlm.py's recipe: datasets.map of the tokenizer over the rows (batches of 1,000),
        group_texts joining them and cutting 128-token blocks, and DataCollatorForLanguageModeling
        (15%) through a DataLoader; the map is timed with the batches, as both are rows -> batches.

Rates are sequences per second, the best of `--repeats` passes of as many sequences as one pass of
the Hugging Face recipe gives (at least `--min-sequences`), after one untimed batch. One core: torch and
the fast tokenizer are held to one thread (TOKENIZERS_PARALLELISM=false), so "per core" holds in the
training process; with N workers, each worker is one process, and the rate per core is the rate / N.
`--gpu-rate` says how many workers a GPU consuming that many sequences per second needs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
import torch  # noqa: E402
from common import hf_recipe_loader, read_lines  # noqa: E402
from transformers import BertConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from mlm_helpers.config import TrainConfig, sample_corpus_files  # noqa: E402
from mlm_helpers.data.masking import Vocabulary  # noqa: E402
from mlm_helpers.scratch import train_wordpiece_tokenizer  # noqa: E402
from mlm_helpers.training.prepare import training_batches  # noqa: E402

# An H200 training bert-base at 40% MFU on 128-token blocks: 0.4 x 989 TFLOP/s over 0.54 GFLOP per
# token (training_flops_per_token, sparse head) is about 730,000 tokens, 5,700 sequences, per second.
H200_AT_40_PERCENT = 5_700


def hf_rate(lines: list[str], tokenizer, block: int, batch_size: int, repeats: int) -> tuple[float, int]:
    """Sequences per second of the Hugging Face recipe (best of `repeats` passes), and one pass's count."""
    best, count = 0.0, 0
    for _ in range(repeats):
        started = time.perf_counter()
        count = sum(
            len(batch["input_ids"]) for batch in hf_recipe_loader(lines, tokenizer, block, batch_size)
        )
        best = max(best, count / (time.perf_counter() - started))
    return best, count


def our_rate(lines: list[str], tokenizer, block: int, batch_size: int, workers: int, sequences: int,
             repeats: int) -> float:  # fmt: skip
    """Sequences per second of our training batches with `workers` DataLoader workers (best of `repeats`
    runs of `sequences` sequences each, after the first batch: the workers' start and the shuffle
    buffer's first fill)."""
    cfg = TrainConfig(max_length=block, batch_size=batch_size, data_workers=workers)
    rows = datasets.Dataset.from_dict({"text": lines}).to_iterable_dataset()
    batches = training_batches(rows, tokenizer, Vocabulary.from_tokenizer(tokenizer), cfg)
    next(batches)
    best = 0.0
    for _ in range(repeats):
        count, started = 0, time.perf_counter()
        while count < sequences:
            count += len(next(batches)["input_ids"])
        best = max(best, count / (time.perf_counter() - started))
    return best


def bert_base_tokenizer(lines: list[str]):
    """The WordPiece tokenizer of the bert-base-sized model in benchmarks/common.py."""
    return train_wordpiece_tokenizer(lines, vocab_size=BertConfig().vocab_size)


def workers_needed(gpu_rate: float, per_worker: float) -> int:
    """DataLoader workers that together make `gpu_rate` sequences per second at `per_worker` each."""
    return math.ceil(gpu_rate / per_worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_text = Path(sample_corpus_files()[0]).parent
    parser.add_argument(
        "text", nargs="?", type=Path, default=default_text, help="a .txt file or a folder of them"
    )
    parser.add_argument("--block", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per batch")
    parser.add_argument("--data-workers", nargs="+", type=int, default=[0, 1], help="our worker counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path (the best counts)")
    parser.add_argument("--min-sequences", type=int, default=2000, help="sequences per timed pass of ours")
    parser.add_argument("--gpu-rate", type=float, default=H200_AT_40_PERCENT,
                        help="sequences/s a GPU consumes (default: H200, 40%% MFU, bert-base)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    load_before = os.getloadavg()[0]
    lines = read_lines(args.text)
    tokenizer = bert_base_tokenizer(lines)
    hf, per_pass = hf_rate(lines, tokenizer, args.block, args.batch_size, args.repeats)
    sequences = max(per_pass, args.min_sequences)
    ours = {
        workers: our_rate(lines, tokenizer, args.block, args.batch_size, workers, sequences, args.repeats)
        for workers in args.data_workers
    }
    print(f"\n{args.text}: {len(lines):,} lines, {per_pass:,} sequences of {args.block} tokens per pass; "
          f"tokenizer {len(tokenizer):,} entries; batch {args.batch_size}; torch {torch.__version__}, "
          f"datasets {datasets.__version__}; {os.cpu_count()} CPUs; load average {load_before:.1f} at the "
          f"start, {os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print("| path | data workers | sequences/s | per core | vs Hugging Face (per core) |")
    print("|---|---|---|---|---|")
    print(f"| Hugging Face: map + group_texts + collator | 0 | {hf:,.0f} | {hf:,.0f} | 1.0x |")
    for workers, rate in ours.items():
        per_core = rate / max(workers, 1)
        print(
            f"| ours: training_batches | {workers} | {rate:,.0f} | {per_core:,.0f} | {per_core / hf:.1f}x |"
        )
    per_worker = ours.get(1) or ours[min(ours)]
    print(f"A GPU consuming {args.gpu_rate:,.0f} sequences/s needs about "
          f"{workers_needed(args.gpu_rate, per_worker)} data workers at {per_worker:,.0f} each "
          "(with a core for each, and one for the training process).")  # fmt: skip


if __name__ == "__main__":
    main()
