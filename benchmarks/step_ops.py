"""Where a training step's time goes: each ATen operation of recipe (c)'s steps, timed as it runs.

    python benchmarks/step_ops.py ../shared/corpora --mixed-precision no      # bert-base, 3 steps
    python benchmarks/step_ops.py --size quick --steps 20 --top 15

Recipe (c) of train_throughput.py (our stream, sparse head, train_loop, and on a CPU what train sets
there), untimed `--warmup` steps, then `--steps` steps with every ATen call timed by a
TorchDispatchMode: the clock reads before and after the kernel, so on a CPU, where kernels run as
they are called, each figure is that kernel's own time. Printed: the step's time with the timing on
and off (the mode's cost), then the operations by time per step, and the operations by input shapes.

Why not torch.profiler: on a 2-core AMD EPYC it gave the vocabulary head's weight-gradient product
(30,522 x ~150 x 768) 168 to 172 ms a step, where timed this way, or by hooks on the decoder's backward
node, it took 36 to 42 ms.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from common import SIZES  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from train_throughput import quiet, recipe_c_here  # noqa: E402

from mlm_helpers.config import sample_corpus_files  # noqa: E402
from mlm_helpers.hardware import resolve_mixed_precision, synchronize  # noqa: E402
from mlm_helpers.training.cpu_settings import cpu_training  # noqa: E402


class OpTimes(TorchDispatchMode):
    """Seconds spent in each ATen operation, by (operation, input shapes), and how often it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[tuple, float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        began = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - began
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))[:3]
        key = (func.overloadpacket.__name__, shapes)
        self.seconds[key] += elapsed
        self.calls[key] += 1
        return out


def step_seconds(run, device: torch.device, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        run(1)
        synchronize(device)
        times.append(time.perf_counter() - began)
    return times


def table(rows: list[tuple[str, float, float]], step: float, top: int) -> str:
    """(name, seconds a step, calls a step) rows, the largest first, as a Markdown table."""
    lines = ["| ms a step | share | calls a step | ms a call | operation |", "|---|---|---|---|---|"]
    for name, seconds, calls in sorted(rows, key=lambda row: -row[1])[:top]:
        lines.append(f"| {seconds * 1e3:,.1f} | {seconds / step:.1%} | {calls:.3g} | "
                     f"{seconds / calls * 1e3:,.2f} | {name} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_text = Path(sample_corpus_files()[0]).parent
    parser.add_argument("text", nargs="?", type=Path, default=default_text, help="a .txt file or a folder")
    parser.add_argument("--size", choices=SIZES, default="bert-base")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, with and without the timing")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--top", type=int, default=25, help="rows of each table")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1, --warmup at least 0")
    quiet(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_mixed_precision(args.mixed_precision)
    # its steps: the untimed ones, then as many without the timing as with it
    steps = args.warmup + 2 * args.steps
    model, run = recipe_c_here(args.size, args.text, args.batch_size, precision, steps, device)
    timing = OpTimes()
    with cpu_training(model, device, 1):
        run(args.warmup)
        plain = statistics.median(step_seconds(run, device, args.steps))
        with timing:
            timed = statistics.median(step_seconds(run, device, args.steps))
    by_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for (name, _), seconds in timing.seconds.items():
        by_op[name][0] += seconds / args.steps
    for (name, _), calls in timing.calls.items():
        by_op[name][1] += calls / args.steps
    in_ops = sum(timing.seconds.values()) / args.steps
    print(f"{args.size}, batch {args.batch_size} x 128, {precision}, {device}, "
          f"{torch.get_num_threads()} threads: a step {plain:.3f} s untimed, {timed:.3f} s with every "
          f"operation timed, {in_ops:.3f} s of it in operations (medians of {args.steps} steps)")  # fmt: skip
    print(table([(name, s, c) for name, (s, c) in by_op.items()], timed, args.top))
    print()
    shaped = [(f"{name} {list(shapes)}", seconds / args.steps, timing.calls[(name, shapes)] / args.steps)
              for (name, shapes), seconds in timing.seconds.items()]  # fmt: skip
    print(table(shaped, timed, args.top))


if __name__ == "__main__":
    main()
