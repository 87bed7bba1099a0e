"""One fine-tuning job from a config: check, resume or start, evaluate, fit, evaluate, save.

`train(cfg)` is what the command line and the notebook call. It checks everything it can before any
download, then reports through `outputs/metrics.jsonl`, `outputs/loss.png` and `outputs/summary.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import ConfigError, TrainConfig
from ..fileio import WriteError, check_replaceable, locked_folder, write_text_atomic
from ..hardware import resolve_mixed_precision
from ..mlm_head import SparseMaskedLM
from .checkpoints import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    check_data_files,
    check_processes,
    complete_checkpoints,
    guarded_files,
    latest_checkpoint,
)
from .distributed import (
    full_state,
    gather_from_processes,
    make_accelerator,
)
from .loop import EvalMetrics, evaluate, train_loop
from .outputs import RunResult, model_card, plot_losses, save_model
from .prepare import prepare
from .session import Session, TrainingInterrupted, resume_note


def train(cfg: TrainConfig, *, loop: Callable[..., int] | None = None) -> RunResult:
    """Fine-tune the model a config names on its data, and save it; see the module docstring.

    With ``cfg.resume`` and a checkpoint in ``cfg.output_dir``, training continues from it exactly:
    the same examples, masks and random numbers as an uninterrupted run. Launched as several processes
    (torchrun, accelerate launch), each trains on its own share of the data, gradients are averaged, and
    only the main process writes files. `loop` runs the steps: `train_loop` by default, or a function
    with its signature that wraps it (the tests watch or interrupt runs this way).

    >>> result = train(make_config("quick", max_steps=200))
    >>> print(result.table())
    """
    started = time.perf_counter()
    check_output_paths(cfg)
    precision = resolve_mixed_precision(cfg.mixed_precision)
    accelerator = make_accelerator(precision)
    rank, processes, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    # Dropout draws from the global generator: seeded from the config, differently in each process
    # (process 0 keeps the seed itself, so a one-process run is unchanged).
    set_seed(cfg.seed + rank)
    try:
        seen = complete_checkpoints(Path(cfg.output_dir) / "checkpoints")
        resumed = checkpoint_to_resume(cfg, accelerator) if cfg.resume else None  # before reading data
        model, tokenizer, loader, held_out = prepare(cfg, rank, processes)
        with ExitStack() as held:
            if main:  # only the main process writes
                lock_output_dir(cfg, seen, held)
            session = Session.start(cfg, accelerator, model, loader, held_out, resumed)
            session.fit(loop or train_loop)
            after = session.evaluate(cfg.max_steps)
            result = RunResult(
                session.before, after, Path(cfg.model_dir), Path(cfg.output_dir), cfg.max_steps,
                time.perf_counter() - started, str(accelerator.device), precision,
                session.log.records if session.log else [], processes, main,
            )  # fmt: skip
            save_outputs(session, tokenizer, result)
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, TrainingInterrupted):
            raise
        raise TrainingInterrupted(resume_note(cfg, saved_now=False)) from None
    accelerator.wait_for_everyone()  # no process reports success before the model is saved
    return result


def check_output_paths(cfg: TrainConfig) -> None:
    """Refuse, before any work, output paths that a run would have to overwrite: a file where the output
    folder goes, and a model folder that holds anything but a model saved here."""
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(
            f"--output-dir {cfg.output_dir} is a file, not a folder: choose another path, or move it away."
        )
    check_replaceable(cfg.model_dir, "--model-dir")


def checkpoint_to_resume(cfg: TrainConfig, accelerator: Accelerator) -> Checkpoint | None:
    """The newest good checkpoint in the output folder, the same in every process, checked against this
    run: its settings, its data files' contents and its process count (CheckpointError otherwise)."""
    checkpoints = Path(cfg.output_dir) / "checkpoints"
    resumed = latest_checkpoint(checkpoints)
    found = gather_from_processes(accelerator, resumed.step if resumed else None)
    if len(set(found)) > 1:
        raise CheckpointError(
            f"The processes found different checkpoints in {checkpoints} (steps {found}): put "
            "--output-dir on a file system that every machine sees, or use --no-resume."
        )
    if resumed is not None:
        check_compatible(resumed.trainer["config"], cfg.to_dict(), force=cfg.force_resume)
        check_data_files(
            resumed.trainer.get("data_files"), guarded_files(cfg), cfg.force_resume, word_list=cfg.add_tokens
        )
        check_processes(resumed.trainer, accelerator.num_processes)
    return resumed


def lock_output_dir(cfg: TrainConfig, seen: list[Path], held: ExitStack) -> None:
    """Take the output folder's lock for the rest of the run: a second run there would interleave its
    metrics and checkpoints with ours. Taken once the inputs are checked, so that a run refused for bad
    input leaves nothing behind, not even the folder; if the checkpoints differ from those `seen` when
    this run chose one to resume, another run (which then held the lock) wrote meanwhile, and this run
    stops rather than overwrite them."""
    held.enter_context(locked_folder(cfg.output_dir, "--output-dir"))
    if cfg.resume and complete_checkpoints(Path(cfg.output_dir) / "checkpoints") != seen:
        raise CheckpointError(
            f"Another run wrote checkpoints in --output-dir {cfg.output_dir} while this one started "
            "(it has finished since): run the command again to resume from them."
        )


def save_outputs(session: Session, tokenizer, result: RunResult) -> None:
    """The model folder (weights gathered whole on every process, written by the main one), the loss
    plot and summary.json."""
    weights, _ = full_state(session.model)
    if not result.main_process:
        return
    cfg, output_dir = session.cfg, Path(session.cfg.output_dir)
    try:
        save_model(session.model, tokenizer, cfg.model_dir, model_card(cfg, result), weights)
    except WriteError as error:
        newest = complete_checkpoints(output_dir / "checkpoints")  # the last step's, written before
        raise WriteError(
            f"Could not save the model to {cfg.model_dir} ({error.cause}); what was there is unchanged, "
            f"and the checkpoint of the last step, {newest[0]}, is intact. Free some space, or check "
            "that the folder is writable, and run the same command again: it resumes there and saves.",
            error.cause,
        ) from None
    plot_losses(result.history, output_dir / "loss.png")
    summary = {
        "config": cfg.to_dict(),
        "before": result.before.as_dict(),
        "after": result.after.as_dict(),
        "steps": cfg.max_steps,
        "seconds": result.seconds,
        "device": result.device,
        "mixed_precision": result.mixed_precision,
        "processes": result.processes,
        "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * result.processes,
    }
    write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def evaluate_config(cfg: TrainConfig) -> EvalMetrics:
    """Evaluate the model a config names on its held-out examples, without training."""
    accelerator = make_accelerator(resolve_mixed_precision(cfg.mixed_precision))
    # The model is evaluated as it is: a saved run's folder already holds the words its run added.
    cfg = cfg.replace(add_tokens=None, add_frequent_words=0)
    model, _, _, held_out = prepare(cfg, accelerator.process_index, accelerator.num_processes)
    module = SparseMaskedLM(model).to(accelerator.device)
    return evaluate(module, held_out, accelerator)
