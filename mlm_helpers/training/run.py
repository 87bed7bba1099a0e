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
from safetensors.torch import load_file

from ..config import ConfigError, TrainConfig
from ..fileio import WriteError, check_replaceable, locked_folder, write_text_atomic
from ..hardware import is_out_of_memory, memory_measured, memory_report, resolve_mixed_precision
from ..mlm_head import SparseMaskedLM
from ..publish import check_push, push_model, run_plot
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
    end_trackers,
    full_state,
    gather_from_processes,
    make_accelerator,
)
from .loop import EvalMetrics, evaluate, train_loop
from .outputs import RunResult, model_card, plot_losses, save_model
from .prepare import prepare
from .session import BEST_WEIGHTS, Session, TrainingInterrupted, resume_note

PUSH_LATER = "drop --push-to-hub, and push the saved model later with python -m mlm_helpers push"


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
    accelerator = make_accelerator(precision, cfg.report_to, cfg.output_dir)
    rank, processes, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if main and cfg.push_to_hub:  # the process that pushes at the end checks now that it can
        check_push(cfg.push_to_hub, "--push-to-hub", PUSH_LATER)
    # Dropout draws from the global generator: seeded from the config, differently in each process
    # (process 0 keeps the seed itself, so a one-process run is unchanged).
    set_seed(cfg.seed + rank)
    try:
        seen = complete_checkpoints(Path(cfg.output_dir) / "checkpoints")
        resumed = checkpoint_to_resume(cfg, accelerator) if cfg.resume else None  # before reading data
        prepared = prepare(cfg, rank, processes)
        cfg = prepared.cfg  # with --num-epochs, its steps are counted now
        with ExitStack() as held:
            if main:  # only the main process writes
                lock_output_dir(cfg, seen, held)
            session = Session.start(cfg, accelerator, prepared.model, prepared.loader, prepared.held_out,
                                    prepared.scoring_sample, resumed, prepared.steps_per_epoch)  # fmt: skip
            session.fit(loop or train_loop)
            final = session.evaluate(session.last.step)
            # With --save-best the model saved is the best evaluation's, and "after" describes it.
            best = session.last.best if cfg.save_best else None
            after = EvalMetrics(**{k: v for k, v in best.items() if k != "step"}) if best else final
            result = RunResult(
                session.before, after, Path(cfg.model_dir), Path(cfg.output_dir), session.last.step,
                time.perf_counter() - started, str(accelerator.device), precision,
                session.log.records if session.log else [], processes, main,
                best_step=best["step"] if best else None, stop_reason=session.stop_reason,
            )  # fmt: skip
            save_outputs(session, prepared.tokenizer, result)
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, TrainingInterrupted):
            raise
        raise TrainingInterrupted(resume_note(cfg, saved_now=False)) from None
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(error):
            raise
        raise out_of_memory(cfg, accelerator.device, error) from None
    finally:
        end_trackers(accelerator)  # the tracker's run is closed on every path
    accelerator.wait_for_everyone()  # no process reports success before the model is saved
    if main and cfg.push_to_hub:  # after the barrier: an upload may take longer than a barrier waits
        plot = run_plot(cfg.model_dir, cfg.output_dir)
        url = push_model(cfg.model_dir, cfg.push_to_hub, cfg.hub_private, plot)
        print(f"Pushed {cfg.model_dir} to {url}")
    return result


class OutOfMemory(ConfigError):
    """The device ran out of memory; the message has the figures and the settings that need less."""


def out_of_memory(cfg: TrainConfig, device, error: BaseException) -> OutOfMemory:
    """The error an out-of-memory `error` becomes: what was asked for and what the device holds, the
    three settings that need less memory, and what is left to resume from (nothing is saved here)."""
    remedies = [f"a smaller --max-length ({cfg.max_length} now: attention's memory grows with its square)"]
    if cfg.batch_size > 1:
        half, twice = cfg.batch_size // 2, cfg.gradient_accumulation_steps * 2
        remedies.insert(
            0,
            "a smaller --batch-size with more --gradient-accumulation-steps, which keeps the effective "
            f"batch (e.g. --batch-size {half} --gradient-accumulation-steps {twice} for the "
            f"{cfg.batch_size} x {cfg.gradient_accumulation_steps} now)",
        )
    if not cfg.gradient_checkpointing:
        remedies.append("--gradient-checkpointing (activations recomputed in the backward pass)")
    newest = complete_checkpoints(Path(cfg.output_dir) / "checkpoints")
    kept = (
        f"the last checkpoint, {newest[0]}, is intact: the same command resumes from it (add "
        "--force-resume to resume with another batch size or length)"
        if newest
        else "no checkpoint had been written"
    )
    return OutOfMemory(
        f"Out of memory on {device} ({memory_report(device, error)}). To need less memory, try "
        f"{'; '.join(remedies)}. Nothing was saved; {kept}. More in docs/troubleshooting.md."
    )


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
    if result.best_step is not None:  # --save-best: the weights the best evaluation had
        weights = load_file(output_dir / "best" / BEST_WEIGHTS)
    try:
        card = model_card(cfg, result, tokenizer.mask_token, session.model.config.model_type)
        save_model(session.model, tokenizer, cfg.model_dir, card, weights)
    except WriteError as error:
        newest = complete_checkpoints(output_dir / "checkpoints")  # the last step's, written before
        raise WriteError(
            f"Could not save the model to {cfg.model_dir} ({error.cause}); what was there is unchanged, "
            f"and the checkpoint of the last step, {newest[0]}, is intact. Free some space, or check "
            "that the folder is writable, and run the same command again: it resumes there and saves.",
            error.cause,
        ) from None
    plot_losses(result.history, output_dir / "loss.png")
    peaks = [r["peak_memory_gib"] for r in result.history if "peak_memory_gib" in r]
    summary = {
        "config": cfg.to_dict(),
        "before": result.before.as_dict(),
        "after": result.after.as_dict(),
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stop_reason,
        "seconds": result.seconds,
        "device": result.device,
        "mixed_precision": result.mixed_precision,
        "processes": result.processes,
        "effective_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * result.processes,
        "peak_memory_gib": max(peaks, default=None),  # the main process's, the highest of its log windows
        "memory_measured": memory_measured(session.accelerator.device),
    }
    write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def evaluate_config(cfg: TrainConfig) -> EvalMetrics:
    """Evaluate the model a config names on its held-out examples, without training."""
    accelerator = make_accelerator(resolve_mixed_precision(cfg.mixed_precision))
    # The model is evaluated as it is: a saved run's folder already holds the words its run added.
    cfg = cfg.replace(add_tokens=None, add_frequent_words=0)
    prepared = prepare(cfg, accelerator.process_index, accelerator.num_processes)
    module = SparseMaskedLM(prepared.model).to(accelerator.device)
    return evaluate(module, prepared.held_out, accelerator, prepared.scoring_sample)
