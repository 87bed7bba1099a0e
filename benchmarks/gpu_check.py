"""A one-shot check of a CUDA machine in at most 8 minutes: tests, training speed and MFU, data pipeline,
prediction, and a quick run that saves and reloads. Figures go to JSON and a table.

    bash benchmarks/gpu_check.sh                 # a fresh machine: install what it needs, then this
    python benchmarks/gpu_check.py               # an installed machine
    python benchmarks/gpu_check.py --smoke       # or --dry-run: every part on the CPU, tiny sizes, seconds

gpu_check.sh installs `pip install -e .` and pytest, beside a Python's CUDA build of torch or in .venv
with torch from the CUDA index (WHEELHOUSE=dir on a machine without internet). The parts, each within
its own time budget (a part over it stops there, keeping what it measured), on random weights built
from a config (nothing is downloaded):

  cuda_tests   the tests that skip without CUDA (found by their skipif in tests/), run by pytest.
  train        bert-base (BertConfig()) at 128 tokens, bf16, batches of 64, 128 and 256 (and 256 with
               the encoder compiled unless --no-compile), through our train_loop on batches made
               beforehand by our pipeline (so the model is timed alone): tokens/s, model TFLOP/s
               (training_flops_per_token), MFU against the datasheet peak and against a measured bf16
               matmul. Goal: at least 40% MFU on an H200.
  data         our pipeline (training_batches: rows -> masked batches) with 1, 4 and 8 DataLoader
               workers (--data-workers), sequences of 128 tokens per second.
  predict      Predictor on the GPU, fp32 and bf16: one sentence's latency (p50, p95), texts/s in a batch.
  quick_run    `python -m mlm_helpers train --preset quick --max-steps N`, then load_model of what it
               saved and one prediction with it.

Each part records its figures, or its error, and the next one runs. JSON: $OUT/gpu_check.json when OUT
is set, else ./gpu_check.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import cache
from itertools import cycle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import datasets  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from common import read_lines, sample_sentences  # noqa: E402
from data_throughput import our_rate  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from mlm_helpers.config import TrainConfig, sample_corpus_files  # noqa: E402
from mlm_helpers.data.masking import Vocabulary  # noqa: E402
from mlm_helpers.hardware import known_peak_flops, measure_matmul_peak, synchronize  # noqa: E402
from mlm_helpers.mlm_head import SparseMaskedLM  # noqa: E402
from mlm_helpers.modeling import load_model  # noqa: E402
from mlm_helpers.predict.predictor import Predictor  # noqa: E402
from mlm_helpers.scratch import train_wordpiece_tokenizer  # noqa: E402
from mlm_helpers.training.distributed import make_accelerator  # noqa: E402
from mlm_helpers.training.flops import training_flops_per_token  # noqa: E402
from mlm_helpers.training.loop import TrainArgs, build_optimizer, build_schedule, train_loop  # noqa: E402
from mlm_helpers.training.prepare import training_batches  # noqa: E402

BLOCK = 128
SENTENCE = "The quick brown [MASK] jumps over the lazy dog."
GOAL_MFU = 0.40
# Seconds each part may take on a GPU: 7 minutes together, leaving a minute for starting and the
# tokenizer. --smoke needs far less, mostly the two subprocesses' imports on a loaded CPU.
BUDGETS = {"cuda_tests": 60, "train": 150, "data": 60, "predict": 45, "quick_run": 105}
SMOKE_BUDGETS = {"cuda_tests": 30, "train": 20, "data": 15, "predict": 15, "quick_run": 30}


class PartTimeout(Exception):
    """A part ran past its budget."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise PartTimeout in this (the main) thread after `seconds`; a no-op where there is no SIGALRM."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise PartTimeout(f"past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_parts(parts: dict[str, Callable[[dict], None]], budgets: dict[str, float]) -> dict[str, dict]:
    """Run each part on its own figures dict, within its budget; an error is recorded, and the next
    part runs. A part fills its dict as it goes, so what it measured before failing is kept."""
    results, started = {}, time.perf_counter()
    for name, part in parts.items():
        figures: dict = {}
        began = time.perf_counter()
        entry = {"ok": True, "figures": figures}
        try:
            with time_limit(budgets.get(name, 60)):
                part(figures)
        except Exception as error:  # noqa: BLE001 - a failed part must not lose the others' figures
            entry.update(ok=False, error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        entry["seconds"] = time.perf_counter() - began
        results[name] = entry
        state = "ok" if entry["ok"] else f"FAILED ({entry['error'].splitlines()[0][:120]})"
        print(
            f"[{time.perf_counter() - started:6.1f} s] {name}: {entry['seconds']:.1f} s, {state}", flush=True
        )
    return results


class Check:
    """The parts, at GPU sizes or (smoke) tiny CPU ones, sharing the text and the tokenizer."""

    def __init__(self, smoke: bool, compile_: bool, device: torch.device) -> None:
        self.smoke, self.compile, self.device = smoke, compile_ and not smoke, device
        self.budgets = SMOKE_BUDGETS if smoke else BUDGETS
        self.lines = read_lines(Path(sample_corpus_files()[0]).parent)
        self.precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"

    @cache  # noqa: B019 - one Check per process
    def tokenizer(self):
        """A WordPiece tokenizer learned from the shipped text (bert-base's size; smaller for --smoke)."""
        return train_wordpiece_tokenizer(
            self.lines, vocab_size=1000 if self.smoke else BertConfig().vocab_size
        )

    def bert_config(self) -> BertConfig:
        if self.smoke:
            return BertConfig(vocab_size=len(self.tokenizer()), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64)  # fmt: skip
        return BertConfig()

    def model(self) -> BertForMaskedLM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return BertForMaskedLM(self.bert_config())

    def cuda_tests(self, figures: dict) -> None:
        tests = cuda_test_ids(REPO / "tests")
        figures["tests"] = tests
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=self.budgets["cuda_tests"]
        )
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        figures.update(returncode=done.returncode, summary=summary, output_tail=done.stdout[-3000:])
        figures.update({k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)})
        if done.returncode not in (0, 5):
            raise RuntimeError(f"pytest exited {done.returncode}: {summary}")

    def train(self, figures: dict) -> None:
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        size = 256 if self.smoke else None
        figures["mixed_precision"] = self.precision
        figures["matmul_peak"] = measure_matmul_peak(dtype, self.device, size, 0.2 if self.smoke else 1.0)
        figures["datasheet_peak"] = known_peak_flops(self.device)
        # Ours, as train makes it: it also resets Accelerate's state, which one process keeps for all of
        # its Accelerators (an earlier one with another precision would be refused).
        accelerator = make_accelerator(self.precision)
        figures["rows"] = rows = []
        runs = [(b, False) for b in ((4, 8) if self.smoke else (64, 128, 256))]
        runs += [(256, True)] if self.compile else []
        for batch_size, compiled in runs:
            row = {"batch_size": batch_size, "compiled": compiled}
            rows.append(row)
            row.update(self.train_speed(accelerator, batch_size, compiled, figures))

    def train_speed(self, accelerator: Accelerator, batch_size: int, compiled: bool, figures: dict) -> dict:
        warmup, steps = (1, 2) if self.smoke else (5, 30)
        cfg = TrainConfig(max_length=BLOCK, batch_size=batch_size)
        batches = self.sequences(batch_size)
        real = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
        labelled = sum(int((b["labels"] != -100).sum()) for b in batches) / len(batches) / real
        model = self.model()
        module = SparseMaskedLM(model)
        optimizer = build_optimizer(module, cfg.learning_rate, cfg.weight_decay)
        schedule = build_schedule(optimizer, 0, warmup + steps)
        module, optimizer = accelerator.prepare(module, optimizer)
        if compiled:
            accelerator.unwrap_model(module).model.base_model.compile()
        feed = cycle(batches)
        for start, count in ((0, warmup), (warmup, steps)):
            synchronize(self.device)
            began = time.perf_counter()
            settings = TrainArgs(start + count, log_every=10**9, progress=False)
            train_loop(module, optimizer, schedule, feed, accelerator, settings, start_step=start)
            synchronize(self.device)
        seconds = (time.perf_counter() - began) / steps
        per_token = training_flops_per_token(model.config, BLOCK, labelled)
        tokens = real / seconds
        flops = tokens * per_token
        row = {"seconds_per_step": seconds, "tokens_per_second": tokens, "model_tflops": flops / 1e12,
               "mfu_measured_matmul": flops / figures["matmul_peak"]}  # fmt: skip
        if figures["datasheet_peak"]:
            row["mfu_datasheet"] = flops / figures["datasheet_peak"]
        if self.device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        del module, optimizer, model
        accelerator.free_memory()
        return row

    def rows(self):
        return datasets.Dataset.from_dict({"text": self.lines}).to_iterable_dataset()

    @cache  # noqa: B019 - one Check per process
    def batch_rows(self) -> dict[str, torch.Tensor]:
        """1,024 (smoke: 32) masked 128-token sequences from our pipeline, made once before any timing:
        the training part times the model, not the pipeline (the data part times that)."""
        tokenizer, count = self.tokenizer(), 32 if self.smoke else 1024
        cfg = TrainConfig(max_length=BLOCK, batch_size=count)
        source = training_batches(self.rows(), tokenizer, Vocabulary.from_tokenizer(tokenizer), cfg)
        return next(source)

    def sequences(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """`batch_rows` cut into batches of `batch_size` (packed: every sequence has 128 tokens)."""
        rows = self.batch_rows()
        parts = {key: value.split(batch_size) for key, value in rows.items()}
        return [dict(zip(parts, values)) for values in zip(*parts.values()) if len(values[0]) == batch_size]

    def data(self, figures: dict) -> None:
        batch_size, sequences = (16, 64) if self.smoke else (64, 3000)
        for workers in (1, 2) if self.smoke else (1, 4, 8):
            rate = our_rate(self.lines, self.tokenizer(), BLOCK, batch_size, workers, sequences, repeats=2)
            figures[f"sequences_per_second_{workers}_workers"] = rate

    def predict(self, figures: dict) -> None:
        model, tokenizer = self.model().eval(), self.tokenizer()
        texts = sample_sentences(self.lines, 32 if self.smoke else 512)
        texts = [" ".join(w[:3] + ["[MASK]"] + w[4:]) for w in (t.split() for t in texts)]
        for bf16 in (False, True) if self.precision == "bf16" else (False,):
            predictor = Predictor(model, tokenizer, device=self.device, bf16=bf16, cache_size=0)
            name = "bf16" if bf16 else "fp32"
            predictor.predict(SENTENCE)
            latency = []
            for _ in range(5 if self.smoke else 50):
                began = time.perf_counter()
                predictor.predict(SENTENCE)
                latency.append(time.perf_counter() - began)
            ordered = sorted(latency)
            figures[f"{name}_p50_ms"] = statistics.median(latency) * 1e3
            figures[f"{name}_p95_ms"] = ordered[round(0.95 * (len(ordered) - 1))] * 1e3
            predictor.predict(texts)
            began = time.perf_counter()
            predictor.predict(texts)
            figures[f"{name}_texts_per_second"] = len(texts) / (time.perf_counter() - began)
        figures["batch_texts"] = len(texts)

    def quick_run(self, figures: dict) -> None:
        steps = 3 if self.smoke else 300
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
            model_dir, output_dir = Path(folder) / "model", Path(folder) / "outputs"
            command = [sys.executable, "-m", "mlm_helpers", "train", "--preset", "quick", "--max-steps",
                       str(steps), "--model-dir", str(model_dir), "--output-dir", str(output_dir),
                       "--no-progress"] + (["--eval-size", "32"] if self.smoke else [])  # fmt: skip
            # --smoke: the CPU, as every other part, even on a machine with a GPU
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if self.smoke else None
            began = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env,
                                  timeout=self.budgets["quick_run"])  # fmt: skip
            figures.update(train_seconds=time.perf_counter() - began, returncode=done.returncode)
            if done.returncode:
                raise RuntimeError(f"train exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
            summary = json.loads((output_dir / "summary.json").read_text())
            figures["summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
            model, tokenizer = load_model(model_dir)
            top = Predictor(model, tokenizer, device=self.device).predict(SENTENCE, top_k=3)
            figures["reloaded_top_3"] = [c.token for c in top.masks[0]]


def cuda_test_ids(tests: Path) -> list[str]:
    """pytest ids of the tests marked to skip without CUDA: the test after each such skipif line."""
    ids = []
    for file in sorted(tests.glob("test_*.py")):
        text = file.read_text(encoding="utf-8")
        for match in re.finditer(
            r"skipif\(not torch\.cuda\.is_available\(\).*\n(?:@.*\n)*def (test_\w+)", text
        ):
            ids.append(f"tests/{file.name}::{match.group(1)}")
    return ids


def environment(device: torch.device, smoke: bool) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()  # fmt: skip
    except OSError:  # no git on the machine
        commit = ""
    import accelerate
    import transformers

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit or None,
        "smoke": smoke,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, accelerate, datasets)},
    }


def table(results: dict[str, dict]) -> str:
    """One line per figure, a part's failure on its own line."""
    lines = ["| part | figure | value |", "|---|---|---|"]
    for name, entry in results.items():
        if not entry["ok"]:
            lines.append(f"| {name} | FAILED | {entry['error'].splitlines()[0][:100]} |")
        for key, value in entry["figures"].items():
            if key == "rows":
                for row in value:
                    label = f"batch {row['batch_size']}" + (", compiled" if row["compiled"] else "")
                    shown = ", ".join(
                        f"{k} {v:,.3g}" for k, v in row.items() if k not in ("batch_size", "compiled")
                    )
                    lines.append(f"| {name} | {label} | {shown} |")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {name} | {key} | {value:,.4g} |")
            elif isinstance(value, str) and "\n" not in value:
                lines.append(f"| {name} | {key} | {value[:100]} |")
    return "\n".join(lines)


def goal(results: dict[str, dict]) -> dict:
    """The best datasheet MFU of the training part, against the 40% goal (None without a datasheet peak)."""
    rows = results.get("train", {}).get("figures", {}).get("rows", [])
    best = max((row["mfu_datasheet"] for row in rows if "mfu_datasheet" in row), default=None)
    return {
        "goal_mfu": GOAL_MFU,
        "best_mfu_datasheet": best,
        "met": None if best is None else best >= GOAL_MFU,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke", "--dry-run", dest="smoke", action="store_true", help="every part on the CPU, tiny sizes"
    )
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time batch 256 with the encoder compiled (GPU only)")  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    parser.add_argument("--json", type=Path, default=None, help="default: $OUT/gpu_check.json or ./")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: use --smoke to check the plumbing on a CPU")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    threads = torch.get_num_threads()
    if args.smoke:  # tiny models gain nothing from threads, and a shared CPU's other work stalls them
        torch.set_num_threads(1)
    device = torch.device("cpu" if args.smoke else "cuda")
    try:
        check = Check(args.smoke, args.compile, device)
        env = environment(device, args.smoke)
        results = run_parts({name: getattr(check, name) for name in args.parts}, check.budgets)
    finally:  # as it was, for a caller in the same process (the test)
        torch.set_num_threads(threads)
    report = {"environment": env, "goal": goal(results), "parts": results}
    path = args.json or Path(os.environ["OUT"] if os.environ.get("OUT") else ".") / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(results))
    print(f"goal: {report['goal']}\nJSON: {path}")
    return report


if __name__ == "__main__":
    main()
