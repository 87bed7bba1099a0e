"""Prediction speed: pipeline("fill-mask") against our Predictor on PyTorch and on ONNX Runtime.

    python benchmarks/predict_latency.py                    # bert-base-sized and the quick model
    python benchmarks/predict_latency.py --models quick --repeats 10

Models are built from a config, untrained (latency does not depend on the weights), so the run is
offline: "bert-base" is BertConfig()'s defaults (12 layers, hidden 768, vocabulary 30,522) with a
WordPiece tokenizer learned from the shipped sample text (10,531 entries: the model's other ids are
never produced by the tokenizer, and our predictor never offers them); "quick" is the quick preset's
scratch:tiny model and tokenizer. Each path runs in turn, round-robin, so a neighbour's load on a shared
machine slows all of them alike. Latency: one ~12-token sentence, one call at a time. Throughput: a batch
of texts from the sample corpus, one word each masked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import SIZES, build, read_lines, round_robin, sample_sentences  # noqa: E402
from transformers import pipeline  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from mlm_helpers.config import sample_corpus_files  # noqa: E402
from mlm_helpers.predict.onnx_backend import export_onnx, load_onnx  # noqa: E402
from mlm_helpers.predict.predictor import BATCH_SIZE, Predictor  # noqa: E402

SENTENCE = "The quick brown [MASK] jumps over the lazy dog."


def masked_batch(lines: list[str], size: int) -> list[str]:
    """`size` sample sentences of 8 to 20 words, the middle word of each masked."""
    chosen = [line.split() for line in sample_sentences(lines, size)]
    return [
        " ".join(words[: len(words) // 2] + ["[MASK]"] + words[len(words) // 2 + 1 :]) for words in chosen
    ]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def bench_model(name: str, lines: list[str], args: argparse.Namespace) -> list[tuple]:
    make_model, tokenizer = build(name, lines)
    model = make_model().eval()
    batch = masked_batch(lines, args.batch)
    fill_mask = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    paths = {
        "pipeline": None,
        "ours, PyTorch": Predictor(model, tokenizer, batch_size=args.batch_size, cache_size=0),
    }
    if not args.no_onnx:
        for label, quantize in (("ours, ONNX Runtime", False), ("ours, ONNX Runtime int8", True)):
            folder = Path(tempfile.mkdtemp(prefix="mlm_onnx_")) / name
            started = time.perf_counter()
            export_onnx(model, tokenizer, folder, quantize=quantize)
            print(f"{name}: {label} export took {time.perf_counter() - started:.0f} s", file=sys.stderr)
            backend, onnx_tokenizer = load_onnx(folder, threads=args.threads)
            paths[label] = Predictor(backend, onnx_tokenizer, batch_size=args.batch_size, cache_size=0)
            shutil.rmtree(folder.parent)  # the session holds what it needs

    # The same answer from every path; the pipeline also offers ids the tokenizer cannot write, ours never.
    expected = [c["token"] for c in fill_mask(SENTENCE, top_k=100) if c["token"] < len(tokenizer)][:5]
    for label, predictor in paths.items():
        if predictor is not None and "int8" not in label:  # int8 is close, not equal
            assert [c["token"] for c in predictor(SENTENCE)] == expected, (
                f"{label} disagrees with the pipeline"
            )

    def single(predictor):
        return (lambda: fill_mask(SENTENCE)) if predictor is None else (lambda: predictor.predict(SENTENCE))

    def batched(predictor):
        if predictor is None:
            return lambda: fill_mask(batch, batch_size=args.pipeline_batch_size)
        return lambda: predictor.predict(batch)

    latency = round_robin({label: single(p) for label, p in paths.items()}, args.repeats, warm_up=True)
    # Warm already from the single calls; a batch of the pipeline's takes a minute on a busy CPU.
    throughput = round_robin(
        {label: batched(p) for label, p in paths.items()}, args.batch_repeats, warm_up=False
    )
    rows = []
    base_p50 = statistics.median(latency["pipeline"])
    base_rate = len(batch) / statistics.median(throughput["pipeline"])
    for label in paths:
        p50, p95 = statistics.median(latency[label]), percentile(latency[label], 0.95)
        rate = len(batch) / statistics.median(throughput[label])
        rows.append((name, label, p50 * 1e3, p95 * 1e3, base_p50 / p50, rate, rate / base_rate))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--repeats", type=int, default=30, help="single-sentence calls per path")
    parser.add_argument("--batch", type=int, default=64, help="texts per batched call")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="our texts per forward pass")
    parser.add_argument("--batch-repeats", type=int, default=2, help="batched calls per path")
    parser.add_argument(
        "--pipeline-batch-size", type=int, default=1, help="the pipeline's own batch_size (its default: 1)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every path (default: all)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime paths")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # the pipeline's advice to use a dataset is noise here
    load_before = os.getloadavg()[0]  # other work on the machine slows every path; say how much there was
    lines = read_lines(Path(sample_corpus_files()[0]).parent)
    rows = [row for name in args.models for row in bench_model(name, lines, args)]
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    header = ("model", "path", "p50 ms", "p95 ms", "speed-up", f"texts/s (batch {args.batch})", "vs pipeline")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, label, p50, p95, speedup, rate, ratio in rows:
        print(f"| {name} | {label} | {p50:.1f} | {p95:.1f} | {speedup:.1f}x | {rate:.1f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
