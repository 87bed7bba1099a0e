"""Training speed: the original recipe, Hugging Face's run_mlm.py recipe and ours, on the same text.

    python benchmarks/train_throughput.py                               # bert-base and quick
    python benchmarks/train_throughput.py --sizes bert-base --recipes b c --steps 1 --rounds 7 --warmup 1
    python benchmarks/train_throughput.py --device cuda --steps 10 --rounds 5 --warmup 10
    python benchmarks/train_throughput.py my_book.txt --sizes quick --json speed.json

Every recipe trains the same model from the same initial weights on the same text, `--batch-size`
sequences per optimizer step, each in a process of its own. After `--warmup` untimed steps, the
recipes take turns: a round is `--steps` timed steps of each, in an order that rotates, then about a
second (`--matmul-seconds`) of large matmul products in each precision; `--rounds` rounds in all. So
a slow spell of a shared machine falls on every recipe and on the matmul alike, and the figures are
medians of rounds, the speed-ups the median of the ratios taken round by round (their range printed):

  (a) the original project: one example per line of text (a sentence), padded to 512 tokens,
      BertForMaskedLM with its full vocabulary head, fp32, a plain AdamW loop. Masks come from the
      same Hugging Face collator as (b): how a mask is drawn costs nothing next to the model.
  (b) Hugging Face's run_mlm.py: the text tokenized, joined and cut into 128-token blocks by its
      tokenize_function and group_texts through datasets.map, before the clock starts as there,
      DataCollatorForLanguageModeling (15%), BertForMaskedLM with its full head, fp32, plain AdamW.
  (c) ours, default settings with 128-token blocks: ExampleStream, MaskedLanguageModelingDataset and
      collate, SparseMaskedLM, build_optimizer, build_schedule and train_loop on an Accelerator with
      resolve_mixed_precision("auto"): bf16 autocast on a recent GPU and on a CPU with bf16 in
      hardware (AMX, AVX512-BF16), fp32 on other CPUs; `--mixed-precision no` holds it to fp32. On
      a CPU, with what train sets there (training.cpu_settings): the heap kept, the word embedding's
      gradient rows added in place, dropout's masks from fewer random draws, the linear layers'
      forward products by oneDNN.

Models are built from a config with random weights (speed does not depend on them), so the run is
offline: "bert-base" is BertConfig()'s defaults (12 layers, hidden 768, vocabulary 30,522) and "quick"
the quick preset's scratch:tiny model. Each gets a WordPiece tokenizer learned from the text; a text
too small for 30,522 entries gives fewer (printed): the model keeps its size, those ids just never occur.
The text is a .txt file or a folder of them, one sentence a line, Project Gutenberg headers stripped;
by default the sample text shipped in the package; give a path for other text (a .txt file or a folder).

Columns: real tokens/s counts tokens that are not padding. Peak memory is the rise over the recipe's
start in its process: on CUDA torch.cuda.max_memory_allocated; on a Linux CPU the peak resident set
(VmHWM), reset at the start through /proc/self/clear_refs; elsewhere ru_maxrss. The model's FLOPs
(mlm_helpers.training.flops; real tokens only) are given as a share of the matmul's FLOP/s measured in
the recipe's precision ((a) and (b) fp32, (c) its own): of the median of the rounds' median products,
which ran in the same spells as the steps, and of the fastest product, the best case seen.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import datasets  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from common import SIZES, build, hf_recipe_loader, read_lines  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorForLanguageModeling,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from mlm_helpers.config import TrainConfig, sample_corpus_files  # noqa: E402
from mlm_helpers.data.batches import TrackedBatches  # noqa: E402
from mlm_helpers.data.masking import Vocabulary  # noqa: E402
from mlm_helpers.hardware import (  # noqa: E402
    cpu_supports_bf16,
    known_peak_flops,
    matmul_rates,
    resolve_mixed_precision,
    synchronize,
)
from mlm_helpers.mlm_head import SparseMaskedLM  # noqa: E402
from mlm_helpers.training.cpu_settings import cpu_training  # noqa: E402
from mlm_helpers.training.flops import training_flops_per_token  # noqa: E402
from mlm_helpers.training.loop import TrainArgs, build_optimizer, build_schedule, train_loop  # noqa: E402
from mlm_helpers.training.prepare import training_batches  # noqa: E402

ORIGINAL_LENGTH, BLOCK = 512, 128
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {"a": "(a) original: sentences padded to 512", "b": "(b) HF run_mlm: 128-token blocks",
         "c": "(c) ours: 128-token blocks"}  # fmt: skip


class Counted:
    """Passes batches through, counting sequences, real (unpadded) tokens and labelled tokens."""

    def __init__(self, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        self.batches = batches
        self.reset()

    def reset(self) -> None:
        self.sequences, self.positions, self.real, self.labelled = 0, 0, 0, 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.batches)
        self.sequences += len(batch["input_ids"])
        self.positions += batch["input_ids"].numel()
        self.real += int(batch["attention_mask"].sum())
        self.labelled += int((batch["labels"] != -100).sum())
        return batch


def endless(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader


def plain_loop(model, batches: Counted, device: torch.device, total_steps: int) -> Callable[[int], None]:
    """The loop of (a) and (b): forward with labels (full head), backward, AdamW and schedule steps."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, total_steps)

    def run(steps: int) -> None:
        for _ in range(steps):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # the loss each loop logs; on CUDA it waits for the step

    return run


def recipe_a(model, lines, tokenizer, device, args) -> tuple[Callable[[int], None], Counted]:
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)

    def pad_and_mask(batch_lines: list[str]) -> dict[str, torch.Tensor]:
        batch = tokenizer(batch_lines, padding="max_length", max_length=ORIGINAL_LENGTH, truncation=True,
                          return_special_tokens_mask=True, return_tensors="pt")  # fmt: skip
        special = batch.pop("special_tokens_mask")
        batch["input_ids"], batch["labels"] = collator.torch_mask_tokens(batch["input_ids"], special)
        return dict(batch)

    loader = DataLoader(lines, batch_size=args.batch_size, shuffle=True, collate_fn=pad_and_mask,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    batches = Counted(endless(loader))
    return plain_loop(model, batches, device, args.warmup + args.steps), batches


def recipe_b(model, lines, tokenizer, device, args) -> tuple[Callable[[int], None], Counted]:
    loader = hf_recipe_loader(lines, tokenizer, BLOCK, args.batch_size)
    batches = Counted(endless(loader))
    return plain_loop(model, batches, device, args.warmup + args.steps), batches


def our_loader(lines, tokenizer, cfg: TrainConfig) -> TrackedBatches:
    """Recipe (c)'s batches, as training.prepare builds them."""
    rows = datasets.Dataset.from_dict({"text": lines}).to_iterable_dataset()
    return training_batches(rows, tokenizer, Vocabulary.from_tokenizer(tokenizer), cfg)


def pipeline_rate(lines, tokenizer, args, seconds: float = 3.0) -> float:
    """Sequences per second that (c)'s data pipeline alone produces, in this process (no model)."""
    cfg = TrainConfig(max_length=BLOCK, batch_size=args.batch_size, data_workers=args.data_workers)
    batches = our_loader(lines, tokenizer, cfg)
    next(batches)  # the shuffle buffer's first fill
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        count += len(next(batches)["input_ids"])
    return count / (time.perf_counter() - started)


def recipe_c(model, lines, tokenizer, device, args) -> tuple[Callable[[int], None], Counted]:
    cfg = TrainConfig(max_length=BLOCK, batch_size=args.batch_size, max_steps=args.warmup + args.steps,
                      data_workers=args.data_workers)  # fmt: skip
    loader = our_loader(lines, tokenizer, cfg)
    accelerator = Accelerator(mixed_precision=args.precision, cpu=device.type == "cpu")
    module = SparseMaskedLM(model)
    optimizer = build_optimizer(module, cfg.learning_rate, cfg.weight_decay)
    schedule = build_schedule(optimizer, cfg.warmup_steps, cfg.max_steps)
    module, optimizer = accelerator.prepare(module, optimizer)
    if args.compile:  # the encoder only: the masked positions' count, so the head's shapes, vary
        accelerator.unwrap_model(module).model.base_model.compile()
    batches = Counted(iter(loader))
    done = 0

    def run(steps: int) -> None:
        nonlocal done
        settings = TrainArgs(
            done + steps, max_grad_norm=cfg.max_grad_norm, log_every=cfg.log_every, progress=False
        )
        train_loop(module, optimizer, schedule, batches, accelerator, settings, start_step=done)
        done += steps

    return run, batches


RECIPES = {"a": recipe_a, "b": recipe_b, "c": recipe_c}


def recipe_c_here(
    size: str, text: Path, batch_size: int, precision: str, steps: int, device: torch.device
) -> tuple[torch.nn.Module, Callable[[int], None]]:
    """Recipe (c) of `size` on `text`, in this process, for the scripts that time its steps one by one
    (step_ops.py, cpu_settings_ab.py): the model, and a call running that many optimizer steps of it,
    `steps` of them in all. What train sets on a CPU is the caller's to enter."""
    lines = read_lines(text)
    make_model, tokenizer = build(size, lines)
    model = make_model()
    settings = argparse.Namespace(batch_size=batch_size, warmup=0, steps=steps, data_workers=0,
                                  precision=precision, compile=False)  # fmt: skip
    run, _ = recipe_c(model, lines, tokenizer, device, settings)
    return model, run


class MemoryMeter:
    """The peak memory rise from `start()` to `peak()`, in bytes; `method` says how it is measured."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        elif _reset_peak_rss():
            self.method = "peak resident set (VmHWM), reset before the model is built"
        else:  # it counts the tokenizer's learning too
            self.method = "ru_maxrss of the recipe's process"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        with contextlib.suppress(OSError):  # hand freed heap back, so the baseline is what is in use
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.baseline = _status_kb("VmRSS") if _reset_peak_rss() else _peak_rss()

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        return _peak_rss() - self.baseline


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), flags=re.MULTILINE)
    return int(match.group(1)) * 1024


def _peak_rss() -> int:
    if Path("/proc/self/status").is_file():
        return _status_kb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def recipe_process(recipe: str, size: str, args: argparse.Namespace, conn: Connection) -> None:
    """One recipe in a process of its own (its memory, heap and threads untouched by the others): builds
    its model and batches, runs the untimed steps, then `args.steps` timed steps each time the parent
    asks, and at the end sends its figures."""
    quiet(args)
    device = torch.device(args.device)
    conn.send(measure_recipe(recipe, size, device, args, conn))


def timed_rounds(
    run, batches: Counted, device: torch.device, args: argparse.Namespace, conn: Connection
) -> list[dict]:
    """The untimed steps, then `args.steps` timed ones each time the parent asks, until it says stop."""
    run(args.warmup)
    synchronize(device)
    conn.send("ready")
    rounds = []
    while conn.recv():
        batches.reset()
        started = time.perf_counter()
        run(args.steps)
        synchronize(device)
        seconds = time.perf_counter() - started
        rounds.append({"seconds": seconds, "real": batches.real, "positions": batches.positions,
                       "sequences": batches.sequences, "labelled": batches.labelled})  # fmt: skip
        conn.send("done")
    return rounds


def measure_recipe(
    recipe: str, size: str, device: torch.device, args: argparse.Namespace, conn: Connection
) -> dict:
    lines = read_lines(args.text)
    make_model, tokenizer = build(size, lines)
    meter = MemoryMeter(device)
    meter.start()
    model = make_model()
    config = model.config
    run, batches = RECIPES[recipe](model, lines, tokenizer, device, args)
    # (c) with what train sets around its loop on a CPU, for all of its steps, as train does.
    settings = cpu_training(model, device, 1, args.compile) if recipe == "c" else contextlib.nullcontext()
    with settings:
        rounds = timed_rounds(run, batches, device, args, conn)
    real = sum(r["real"] for r in rounds)
    tokens_per_sequence = real / sum(r["sequences"] for r in rounds)
    labelled_share = sum(r["labelled"] for r in rounds) / real
    row = {
        "recipe": recipe,
        "size": size,
        "tokenizer_entries": len(tokenizer),
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "vocabulary": config.vocab_size,
        "attention": config._attn_implementation,
        "rounds": [r["real"] / r["seconds"] for r in rounds],
        "tokens_per_second": statistics.median(r["real"] / r["seconds"] for r in rounds),
        "padding": 1 - real / sum(r["positions"] for r in rounds),
        "peak_memory_bytes": meter.peak(),
        "memory_method": meter.method,
        "tokens_per_sequence": tokens_per_sequence,
        "labelled_share": labelled_share,
        "flops_per_token": training_flops_per_token(
            config, round(tokens_per_sequence), labelled_share if recipe == "c" else None
        ),
    }
    del model, run, batches
    if recipe == "c":
        row["pipeline_sequences_per_second"] = pipeline_rate(lines, tokenizer, args)
    return row


def quiet(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()


def bench_size(size: str, device: torch.device, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Every recipe's figures for one model size, and the matmul rates measured between their rounds
    (the rounds as the module's docstring says)."""
    spawn = multiprocessing.get_context("spawn")
    workers = {}
    for recipe in args.recipes:
        ours, theirs = spawn.Pipe()
        process = spawn.Process(target=recipe_process, args=(recipe, size, args, theirs), daemon=True)
        process.start()
        workers[recipe] = (process, ours)
    for _, conn in workers.values():
        conn.recv()  # built and warmed up
    precisions = sorted({"no", args.precision})
    rates: dict[str, list[float]] = {p: [] for p in precisions}
    round_medians: dict[str, list[float]] = {p: [] for p in precisions}
    for turn in range(args.rounds):
        order = args.recipes[turn % len(args.recipes) :] + args.recipes[: turn % len(args.recipes)]
        for recipe in order:
            workers[recipe][1].send(True)
            workers[recipe][1].recv()  # the round is done
        for p in precisions:
            measured = matmul_rates(DTYPES[p], device, seconds=args.matmul_seconds)
            rates[p] += measured
            round_medians[p].append(statistics.median(measured))
    rows = []
    for process, conn in workers.values():
        conn.send(False)
        rows.append(conn.recv())
        process.join()
    peaks = {p: {"median": statistics.median(round_medians[p]), "fastest": max(rates[p])} for p in precisions}
    by_recipe = {row["recipe"]: row for row in rows}
    for row in rows:
        precision = args.precision if row["recipe"] == "c" else "no"
        row["model_flops_per_second"] = row["tokens_per_second"] * row["flops_per_token"]
        for statistic, peak in peaks[precision].items():
            row[f"share_of_{statistic}_matmul"] = row["model_flops_per_second"] / peak
        if "c" in by_recipe:  # round by round: the two ran minutes apart at most
            ratios = [c / r for c, r in zip(by_recipe["c"]["rounds"], row["rounds"], strict=True)]
            row["c_speedup"] = statistics.median(ratios)
            row["c_speedup_range"] = [min(ratios), max(ratios)]
    return rows, peaks


def print_size(rows: list[dict], peaks: dict, args: argparse.Namespace) -> None:
    first = rows[0]
    print(f"\n{first['size']}: {first['layers']} layers, hidden {first['hidden']}, model vocabulary "
          f"{first['vocabulary']:,}; tokenizer learned from the text: {first['tokenizer_entries']:,} "
          f"entries; attention: {first['attention']}; batch {args.batch_size} sequences; {args.rounds} "
          f"rounds of {args.steps} timed steps per recipe, after {args.warmup} untimed; peak memory: "
          f"{first['memory_method']}")  # fmt: skip
    header = ("recipe", "s/step", "real tokens/s", "padding", "peak memory", "(c) speed-up",
              "model TFLOP/s", "share of matmul: median", "fastest")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        rate = row["tokens_per_second"]
        speedup = "-"
        if "c_speedup" in row and row["recipe"] != "c":
            low, high = row["c_speedup_range"]
            speedup = f"{row['c_speedup']:.2f}x ({low:.2f}-{high:.2f})"
        cells = (
            NAMES[row["recipe"]],
            f"{row['tokens_per_sequence'] * args.batch_size / rate:.3f}",
            f"{rate:,.{0 if rate >= 100 else 1}f}",
            f"{row['padding']:.0%}",
            f"{row['peak_memory_bytes'] / 2**20:,.0f} MiB",
            speedup,
            f"{row['model_flops_per_second'] / 1e12:.3f}",
            f"{row['share_of_median_matmul']:.1%}",
            f"{row['share_of_fastest_matmul']:.1%}",
        )
        print("| " + " | ".join(cells) + " |")
    measured = "; ".join(
        f"{DTYPES[p]} median {v['median'] / 1e12:.3f}, fastest {v['fastest'] / 1e12:.3f} TFLOP/s"
        for p, v in peaks.items()
    )
    print(f"Matmul rates measured between the rounds: {measured}.")
    for row in rows:
        if "pipeline_sequences_per_second" in row:
            print(f"(c)'s data pipeline alone (tokenize, pack, mask, batch; {args.data_workers} workers): "
                  f"{row['pipeline_sequences_per_second']:,.0f} sequences/s of {BLOCK} tokens; (c) trained "
                  f"on {row['tokens_per_second'] / BLOCK:,.0f}/s.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_text = Path(sample_corpus_files()[0]).parent  # the repository alone; other text by path
    parser.add_argument(
        "text", nargs="?", type=Path, default=default_text, help="a .txt file or a folder of them"
    )
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--recipes", nargs="+", default=["a", "b", "c"], choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per recipe and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of timed steps, recipes taking turns")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the rounds")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="sequences per step")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile the encoder in recipe (c)")  # fmt: skip
    parser.add_argument("--data-workers", type=int, default=0, help="recipe (c)'s DataLoader workers")
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto",
                        help="recipe (c)'s precision; 'no': fp32, as (b), on a CPU with bf16")  # fmt: skip
    parser.add_argument("--matmul-seconds", type=float, default=1.0,
                        help="seconds of matmul products per precision after each round")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be at least 1, --warmup at least 0")
    quiet(args)
    device = torch.device(args.device)
    # "auto" answers for the machine's best device; train() never runs on the CPU of a GPU machine.
    on_best_device = device.type == "cuda" or not torch.cuda.is_available()
    args.precision = resolve_mixed_precision(args.mixed_precision) if on_best_device else "no"
    load_before = os.getloadavg()[0]
    rows, peaks = [], {}
    for size in args.sizes:
        size_rows, peaks[size] = bench_size(size, device, args)
        print_size(size_rows, peaks[size], args)
        rows += size_rows

    chip = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    datasheet = known_peak_flops(device)
    print(f"\n{args.text}. {chip}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at "
          f"the end. CPU bf16 in hardware: {cpu_supports_bf16()}. (c) mixed precision: {args.precision}"
          + (f"; datasheet 16-bit peak {datasheet / 1e12:.0f} TFLOP/s" if datasheet else ""))  # fmt: skip
    if args.json:
        environment = {"device": chip, "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "mixed_precision": args.precision, "datasheet_peak": datasheet,
                       "matmul_rates": {size: {str(DTYPES[p]): v for p, v in by.items()}
                                        for size, by in peaks.items()},
                       "text": str(args.text), "batch_size": args.batch_size, "steps": args.steps,
                       "rounds": args.rounds, "warmup": args.warmup}  # fmt: skip
        args.json.write_text(json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n")


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    match = (
        re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if cpuinfo.is_file()
        else None
    )
    return match.group(1).strip() if match else "CPU"


if __name__ == "__main__":
    main()
