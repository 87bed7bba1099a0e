"""Each of train's CPU settings against its absence: recipe (c)'s steps taking turns with it on and off.

    python benchmarks/cpu_settings_ab.py ../shared/corpora --mixed-precision no      # every setting
    python benchmarks/cpu_settings_ab.py --settings onednn --pairs 20 --size quick

What train sets around its loop on a CPU (training/cpu_settings.py) is kept only where it wins, and
what wins depends on the CPU. Here the model of `--size` trains as recipe (c) of train_throughput.py,
with every setting on (the kept heap throughout) but the one measured, which is on for one step and
off for the next, in an order that alternates, `--pairs` times: a shared machine's slow spells fall
on both alike. Printed for each setting: the median step with it and without, and the median of the
pairs' ratios with their range and how many pairs it won.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import SIZES  # noqa: E402
from train_throughput import quiet, recipe_c_here  # noqa: E402

from mlm_helpers.config import sample_corpus_files  # noqa: E402
from mlm_helpers.hardware import heap_kept, resolve_mixed_precision  # noqa: E402
from mlm_helpers.mlm_head import embedding_gradient_in_place  # noqa: E402
from mlm_helpers.onednn import onednn_training  # noqa: E402
from mlm_helpers.training.dropout import cpu_dropout, has_dropout  # noqa: E402

# cpu_training's settings as blocks of their own, for a lone process that recomputes nothing, but the
# kept heap: leaving it hands the heap back, so the next step would fault its memory in again whichever
# way it ran (the training benchmark measures it, each recipe in a process of its own). It stays on.
SETTINGS = {
    "rows_in_place": lambda model, on: embedding_gradient_in_place(model, enabled=on),
    "dropout": lambda model, on: cpu_dropout(on and has_dropout(model)),
    "onednn": lambda model, on: onednn_training(model, enabled=on),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_text = Path(sample_corpus_files()[0]).parent
    parser.add_argument("text", nargs="?", type=Path, default=default_text, help="a .txt file or a folder")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--size", choices=SIZES, default="bert-base")
    parser.add_argument("--pairs", type=int, default=8, help="steps with the setting, and as many without")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps timed as one")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, every setting on")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.pairs < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--pairs and --steps must be at least 1, --warmup at least 0")
    quiet(args)
    device = torch.device("cpu")
    precision = resolve_mixed_precision(args.mixed_precision)
    steps = args.warmup + 2 * args.pairs * args.steps * len(args.settings)
    model, run = recipe_c_here(args.size, args.text, args.batch_size, precision, steps, device)

    def timed(measured: str, on: bool) -> float:
        with contextlib.ExitStack() as stack:
            for name, setting in SETTINGS.items():
                stack.enter_context(setting(model, on if name == measured else True))
            began = time.perf_counter()
            run(args.steps)
            return (time.perf_counter() - began) / args.steps

    with heap_kept():
        with contextlib.ExitStack() as stack:
            for setting in SETTINGS.values():
                stack.enter_context(setting(model, True))
            run(args.warmup)
        rows = [measure(name, timed, args.pairs) for name in args.settings]
    print(f"{args.size}, batch {args.batch_size} x 128, {precision}, {torch.get_num_threads()} threads, "
          f"{args.pairs} pairs of {args.steps} step(s); load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| setting | s/step with it | without | faster by (pairs' range) | pairs won |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


def measure(name: str, timed, pairs: int) -> str:
    """The table row of one setting: `pairs` steps with it and as many without, taking turns."""
    with_it, without = [], []
    for pair in range(pairs):
        for on in (True, False) if pair % 2 == 0 else (False, True):
            (with_it if on else without).append(timed(name, on))
    ratios = [b / a for a, b in zip(with_it, without)]
    won = sum(ratio > 1 for ratio in ratios)
    return (f"| {name} | {statistics.median(with_it):.3f} | {statistics.median(without):.3f} | "
            f"{statistics.median(ratios):.3f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
            f"{won} of {pairs} |")  # fmt: skip


if __name__ == "__main__":
    main()
