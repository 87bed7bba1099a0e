"""Sentence scoring speed: Predictor.score against a direct loop, on PyTorch and on ONNX Runtime.

    python benchmarks/score_throughput.py                       # the quick model and bert-base size
    python benchmarks/score_throughput.py --models quick --texts 64 --repeats 5

The direct loop is what scoring by hand looks like: for each token of each sentence, one copy with that
token masked, one model call (`model(input_ids=...).logits.log_softmax(-1)`, the full vocabulary
projection at every position). `Predictor.score` sends all masked copies of all sentences through the
model in batches, with the projection at the scored position only. Both score the same tokens with the
"original" variant (one masked token per copy), and the benchmark checks they agree. Models are built
from a config with fixed random weights (speed does not depend on them): see common.py. The paths run in
turn, round-robin, so a neighbour's load on a shared machine slows all of them alike.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import SIZES, build, read_lines, round_robin, sample_sentences  # noqa: E402

from mlm_helpers.config import sample_corpus_files  # noqa: E402
from mlm_helpers.predict.onnx_backend import export_onnx, load_onnx  # noqa: E402
from mlm_helpers.predict.predictor import Predictor  # noqa: E402
from mlm_helpers.predict.scoring import SCORE_BATCH_SIZE  # noqa: E402


def direct_loop(model, tokenizer, texts: list[str]) -> list[float]:
    """Each sentence's PLL, one masked copy and one full model call per token."""
    special, plls = set(tokenizer.all_special_ids), []
    for text in texts:
        ids, total = tokenizer(text)["input_ids"], 0.0
        for position, token in enumerate(ids):
            if token in special:
                continue
            copy = list(ids)
            copy[position] = tokenizer.mask_token_id
            with torch.inference_mode():
                logprobs = model(input_ids=torch.tensor([copy])).logits.log_softmax(-1)
            total += logprobs[0, position, token].item()
        plls.append(total)
    return plls


def bench_model(name: str, lines: list[str], args: argparse.Namespace) -> list[tuple]:
    make_model, tokenizer = build(name, lines)
    model = make_model().eval()
    texts = sample_sentences(lines, args.texts)
    paths: dict[str, Callable[[], list[float]]] = {
        "direct loop": lambda: direct_loop(model, tokenizer, texts)
    }
    predictor = Predictor(model, tokenizer, device="cpu", cache_size=0)
    paths["Predictor.score, PyTorch"] = lambda: [
        s.pll for s in predictor.score(texts, variant="original", batch_size=args.batch_size)
    ]
    if not args.no_onnx:
        folder = Path(tempfile.mkdtemp(prefix="mlm_onnx_")) / name
        started = time.perf_counter()
        export_onnx(model, tokenizer, folder)
        print(f"{name}: ONNX export took {time.perf_counter() - started:.0f} s", file=sys.stderr)
        backend, onnx_tokenizer = load_onnx(folder, threads=args.threads)
        onnx = Predictor(backend, onnx_tokenizer, cache_size=0)
        shutil.rmtree(folder.parent)  # the session holds what it needs
        paths["Predictor.score, ONNX Runtime"] = lambda: [
            s.pll for s in onnx.score(texts, variant="original", batch_size=args.batch_size)
        ]
    expected = paths["direct loop"]()  # each path's first call: checked, and not timed
    for label, call in list(paths.items())[1:]:
        close = [math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-2) for a, b in zip(call(), expected)]
        assert all(close), f"{label} disagrees with the direct loop"
    special = set(tokenizer.all_special_ids)
    tokens = sum(i not in special for text in texts for i in tokenizer(text)["input_ids"])
    times = round_robin(paths, args.repeats)
    base = tokens / statistics.median(times["direct loop"])
    rows = []
    for label in paths:
        rate = tokens / statistics.median(times[label])
        rows.append((name, label, len(texts), tokens, rate, rate / base))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--texts", type=int, default=32, help="sample sentences scored per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path")
    parser.add_argument(
        "--batch-size", type=int, default=SCORE_BATCH_SIZE, help="masked copies per forward pass"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every path (default: all)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # other work on the machine slows every path; say how much there was
    lines = read_lines(Path(sample_corpus_files()[0]).parent)
    rows = [row for name in args.models for row in bench_model(name, lines, args)]
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    header = ("model", "path", "texts", "tokens scored", "tokens/s", "vs direct loop")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, label, count, tokens, rate, ratio in rows:
        print(f"| {name} | {label} | {count} | {tokens:,} | {rate:,.1f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
