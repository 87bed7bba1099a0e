"""Data pipeline speed: rows of text to masked 128-token batches, ours against Hugging Face's recipe.

    python benchmarks/data_throughput.py                          # the sample text shipped in the package
    python benchmarks/data_throughput.py ../shared/corpora --data-workers 0 1 2 --gpu-rate 5700
    python benchmarks/data_throughput.py ../shared/corpora --profile 60   # where our time goes

Both paths read the same rows, tokenize them with the same WordPiece tokenizer (learned from the text,
as bert-base-sized in the training benchmark) and give batches of `--batch-size` masked sequences of
`--block` tokens, ready for a model:

  ours: training.prepare.training_batches, the path `train` reads through: the rows without the
        held-out ones (split_stream, --eval-size 1,000), ExampleStream (shuffle buffer, tokenize,
        pack), MaskedLanguageModelingDataset (the masks, a batch at a time),
        StreamBatches/TrackedBatches (DataLoader workers with --data-workers N).
  Hugging Face: run_mlm.py's recipe: datasets.map of the tokenizer over the rows (batches of 1,000),
        group_texts joining them and cutting 128-token blocks, and DataCollatorForLanguageModeling
        (15%) through a DataLoader; the map is timed with the batches, as both are rows -> batches.

The paths are timed in turn, round after round (`--repeats`), so that load from other work on a shared
machine slows them alike; each round's ratio compares passes run seconds apart. A pass of
ours draws as many sequences as one pass of the Hugging Face recipe gives (at least `--min-sequences`),
after the batches its workers made while the other paths ran. Rates are sequences per second, the best
round's. One core: torch and the fast tokenizer are held to one thread (TOKENIZERS_PARALLELISM=false
unless set otherwise; the output says which), so "per core" holds in the training process; with N
workers, each worker is one process, and the rate per core is the rate / N. The tokenizer alone, timed
in the same rounds, is the ceiling: the sequences its ids would fill per second, with nothing else done.
`--gpu-rate` says how many workers a GPU consuming that many sequences per second needs.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from common import hf_recipe_loader, read_lines, round_robin  # noqa: E402
from transformers import BertConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from mlm_helpers.config import TrainConfig, sample_corpus_files  # noqa: E402
from mlm_helpers.data.examples import TOKENIZE_CHUNK, encode_ids  # noqa: E402
from mlm_helpers.data.masking import Vocabulary  # noqa: E402
from mlm_helpers.data.sources import split_stream  # noqa: E402
from mlm_helpers.scratch import train_wordpiece_tokenizer  # noqa: E402
from mlm_helpers.training.prepare import training_batches  # noqa: E402

# An H200 training bert-base at 40% MFU on 128-token blocks: 0.4 x 989 TFLOP/s over 0.54 GFLOP per
# token (training_flops_per_token, sparse head) is about 730,000 tokens, 5,700 sequences, per second.
H200_AT_40_PERCENT = 5_700
PREFETCH = 2  # the DataLoader's prefetch_factor: batches each worker makes ahead, untimed


def hf_pass(lines: list[str], tokenizer, block: int, batch_size: int) -> Callable[[], int]:
    """One pass of the Hugging Face recipe over `lines`, as a call giving the sequences it made."""

    def one_pass() -> int:
        return sum(len(batch["input_ids"]) for batch in hf_recipe_loader(lines, tokenizer, block, batch_size))

    return one_pass


def tokenizer_pass(lines: list[str], tokenizer, block: int) -> tuple[Callable[[], int], int]:
    """A call tokenizing `lines` as our stream does (encode_ids in chunks of TOKENIZE_CHUNK rows) and
    nothing else, and the sequences of `block` tokens its ids fill: the ceiling of our rate."""
    chunks = [lines[i : i + TOKENIZE_CHUNK] for i in range(0, len(lines), TOKENIZE_CHUNK)]

    def one_pass() -> int:
        return sum(len(ids) for chunk in chunks for ids in encode_ids(chunk, tokenizer))

    return one_pass, one_pass() // (block - 2)


def our_pass(lines: list[str], tokenizer, block: int, batch_size: int, workers: int,
             sequences: int) -> tuple[Callable[[], int], int]:  # fmt: skip
    """A call drawing at least `sequences` sequences of our training batches with `workers` DataLoader
    workers, and how many it draws. The first batch (the workers' start, the shuffle buffer's first
    fill) is drawn here; each call first takes the batches the workers made ahead while it waited."""
    cfg = TrainConfig(max_length=block, batch_size=batch_size, data_workers=workers)
    # As `train` reads them: the first --eval-size rows held out, the others filtered against them.
    rows = split_stream(datasets.Dataset.from_dict({"text": lines}).to_iterable_dataset(), cfg.eval_size)[1]
    batches = training_batches(rows, tokenizer, Vocabulary.from_tokenizer(tokenizer), cfg)
    next(batches)
    draws = -(-sequences // batch_size)

    def one_pass() -> int:
        for _ in range(PREFETCH * workers):
            next(batches)
        return sum(len(next(batches)["input_ids"]) for _ in range(draws))

    return one_pass, draws * batch_size


def our_rate(lines: list[str], tokenizer, block: int, batch_size: int, workers: int, sequences: int,
             repeats: int) -> float:  # fmt: skip
    """Sequences per second of our training batches with `workers` DataLoader workers, the best of
    `repeats` passes of at least `sequences` sequences each (see `our_pass`)."""
    one_pass, count = our_pass(lines, tokenizer, block, batch_size, workers, sequences)
    return count / min(round_robin({"ours": one_pass}, repeats)["ours"])


def bert_base_tokenizer(lines: list[str]):
    """The WordPiece tokenizer of the bert-base-sized model in benchmarks/common.py."""
    return train_wordpiece_tokenizer(lines, vocab_size=BertConfig().vocab_size)


def workers_needed(gpu_rate: float, per_worker: float) -> int:
    """DataLoader workers that together make `gpu_rate` sequences per second at `per_worker` each."""
    return math.ceil(gpu_rate / per_worker)


def tokenizer_threads() -> str:
    """How many threads the fast tokenizer may use here, in words for the report."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("false", "0", "off", "no"):
        return "the fast tokenizer on 1 thread (TOKENIZERS_PARALLELISM=false)"
    threads = os.environ.get("RAYON_NUM_THREADS") or str(os.cpu_count())
    return f"the fast tokenizer on up to {threads} threads: the rates are not one core's"


def profile(lines: list[str], tokenizer, block: int, batch_size: int, batches: int, top: int = 14) -> None:
    """cProfile of `batches` of our batches in the training process: each function's own time, as a
    share of the whole."""
    one_pass, _ = our_pass(lines, tokenizer, block, batch_size, 0, batches * batch_size)
    profiler = cProfile.Profile()
    profiler.runcall(one_pass)
    stats = pstats.Stats(profiler).stats
    total = sum(own for _, _, own, _, _ in stats.values())
    print(f"\ncProfile of {batches} batches of {batch_size} ({total:.2f} s): own time per function")
    print("| share | calls | function |")
    print("|---|---|---|")
    ranked = sorted(stats.items(), key=lambda item: -item[1][2])
    for (file, line, name), (_, calls, own, _, _) in ranked[:top]:
        where = f"{Path(file).name}:{line}({name})" if line else name
        print(f"| {own / total:.0%} | {calls:,} | `{where}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_text = Path(sample_corpus_files()[0]).parent
    parser.add_argument(
        "text", nargs="?", type=Path, default=default_text, help="a .txt file or a folder of them"
    )
    parser.add_argument("--block", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per batch")
    parser.add_argument("--data-workers", nargs="+", type=int, default=[0, 1], help="our worker counts")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of timed passes (the best counts)")
    parser.add_argument("--min-sequences", type=int, default=2000, help="sequences per timed pass of ours")
    parser.add_argument("--gpu-rate", type=float, default=H200_AT_40_PERCENT,
                        help="sequences/s a GPU consumes (default: H200, 40%% MFU, bert-base)")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0, metavar="BATCHES",
                        help="also print a cProfile of this many of our batches, in-process")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    load_before = os.getloadavg()[0]
    lines = read_lines(args.text)
    tokenizer = bert_base_tokenizer(lines)
    hf = hf_pass(lines, tokenizer, args.block, args.batch_size)
    per_pass = hf()  # also the recipe's untimed first pass
    calls, counts = {"hf": hf}, {"hf": per_pass}
    calls["tokenizer"], counts["tokenizer"] = tokenizer_pass(lines, tokenizer, args.block)
    for workers in args.data_workers:
        sequences = max(per_pass, args.min_sequences)
        calls[workers], counts[workers] = our_pass(
            lines, tokenizer, args.block, args.batch_size, workers, sequences
        )
    times = round_robin(calls, args.repeats)
    rates = {path: [counts[path] / seconds for seconds in times[path]] for path in calls}
    hf_best = max(rates["hf"])
    print(f"\n{args.text}: {len(lines):,} lines, {per_pass:,} sequences of {args.block} tokens per pass of "
          f"Hugging Face's recipe; tokenizer {len(tokenizer):,} entries; batch {args.batch_size}; "
          f"{args.repeats} rounds; torch {torch.__version__} on {torch.get_num_threads()} thread, "
          f"{tokenizer_threads()}; transformers {transformers.__version__}, datasets "
          f"{datasets.__version__}, tokenizers {tokenizers.__version__}; {os.cpu_count()} CPUs; load "
          f"average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print("| path | data workers | sequences/s (best round) | per core | vs Hugging Face (per core) | "
          "each round's ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print(f"| Hugging Face: map + group_texts + collator | - | {hf_best:,.0f} | {hf_best:,.0f} | 1.0x | - |")
    for workers in args.data_workers:
        cores = max(workers, 1)
        per_core = max(rates[workers]) / cores
        rounds = [ours / cores / theirs for ours, theirs in zip(rates[workers], rates["hf"], strict=True)]
        print(f"| ours: training_batches | {workers} | {max(rates[workers]):,.0f} | {per_core:,.0f} | "
              f"{per_core / hf_best:.1f}x | {min(rounds):.1f}x to {max(rounds):.1f}x "
              f"(median {statistics.median(rounds):.1f}x) |")  # fmt: skip
    ceiling = max(rates["tokenizer"])
    print(f"| the tokenizer alone (encode_ids, no packing or masking) | - | {ceiling:,.0f} | {ceiling:,.0f} "
          f"| {ceiling / hf_best:.1f}x | - |")  # fmt: skip
    measured = 1 if 1 in args.data_workers else min(args.data_workers)
    per_worker = max(rates[measured]) / max(measured, 1)
    print(f"A GPU consuming {args.gpu_rate:,.0f} sequences/s needs about "
          f"{workers_needed(args.gpu_rate, per_worker)} data workers at {per_worker:,.0f} each "
          "(with a core for each, and one for the training process).")  # fmt: skip
    if args.profile:
        profile(lines, tokenizer, args.block, args.batch_size, args.profile)


if __name__ == "__main__":
    main()
