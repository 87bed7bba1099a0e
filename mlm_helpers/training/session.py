"""A training run in progress, between `train`'s set-up and its final save: the model wrapped for the
processes, its optimizer and schedule, the data, the log, and the state a checkpoint holds.

`Session.start` wraps the model and resumes (or evaluates before training), `fit` runs the loop with
the hooks that write logs, evaluations and checkpoints, and Ctrl-C is answered here, where it is known
what can be saved.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from ..config import TrainConfig
from ..data.batches import CheckpointSchedule, TrackedBatches
from ..fileio import WriteError, write_folder
from ..hardware import known_peak_flops
from ..mlm_head import SparseMaskedLM
from ..modeling import enable_activation_checkpointing
from .checkpoints import (
    Checkpoint,
    CheckpointError,
    TrainingState,
    complete_checkpoints,
    drop_old_checkpoints,
    fingerprint_files,
    guarded_files,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .cpu_settings import cpu_training
from .distributed import (
    full_state,
    gather_from_processes,
    load_full_state,
    log_to_trackers,
    prepare_for_training,
    start_trackers,
)
from .flops import training_flops_per_token
from .loop import (
    EvalMetrics,
    LoopHooks,
    TrainArgs,
    build_optimizer,
    build_schedule,
    build_timed_schedule,
    evaluate,
    train_loop,
)
from .outputs import MetricsLog
from .pseudo_perplexity import ScoringSample

BEST_WEIGHTS = "model.safetensors"  # in OUTPUT_DIR/best, with best.json: its step and metrics


def of_steps(cfg: TrainConfig) -> str:
    """What follows a step number: "of 40", or the time budget of a run without a number of steps."""
    return f"of {cfg.max_steps}" if cfg.max_steps else f"of a time budget of {cfg.time_budget}"


def run_length(cfg: TrainConfig) -> str:
    """How long the run is set to last, in words."""
    if cfg.max_steps:
        return f"{cfg.max_steps} steps"
    return f"as many steps as the time budget of {cfg.time_budget} allows"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`; the message says what was saved, and what a resume starts from."""


def resume_note(cfg: TrainConfig, saved_now: bool) -> str:
    """What an interrupted run leaves to resume from, in words."""
    newest = complete_checkpoints(Path(cfg.output_dir) / "checkpoints")
    if saved_now:
        return f"the last completed step was saved ({newest[0]}): run the same command to resume from it."
    if newest:
        return (
            f"nothing was saved at the interruption; run the same command to resume from the last "
            f"checkpoint, {newest[0]}."
        )
    return "nothing was saved: no step had been checkpointed. The same command starts over."


@dataclass
class Session:
    """A run in progress, between `train`'s set-up and its final save: what the loop's hooks act on.

    `last` is the training state after the newest completed step: what a checkpoint would hold.
    """

    cfg: TrainConfig
    accelerator: Accelerator
    module: SparseMaskedLM  # as prepared by Accelerate (wrapped for DDP, sharded for FSDP)
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loader: TrackedBatches
    held_out: list[dict[str, torch.Tensor]]
    scoring_sample: ScoringSample  # the held-out texts of the pseudo-perplexity
    log: MetricsLog | None  # on the main process only
    last: TrainingState
    steps_per_epoch: int | None = None  # with --num-epochs
    stop_reason: str | None = None  # why the run ends before its last step, once it does
    clock: float = 0.0  # when the training time in `last.seconds` was last brought up to date
    latest: tuple[int, EvalMetrics] | None = None  # the newest evaluation and its step

    @property
    def before(self) -> EvalMetrics:
        """The held-out metrics before training (evaluated at the start, or read from the checkpoint)."""
        return EvalMetrics(**self.last.before)

    @classmethod
    def start(
        cls,
        cfg: TrainConfig,
        accelerator: Accelerator,
        model,
        loader: TrackedBatches,
        held_out: list,
        scoring_sample: ScoringSample,
        resumed: Checkpoint | None,
        steps_per_epoch: int | None = None,
    ) -> Session:
        """Wrap the model and its optimizer for the processes, and resume from `resumed` if given (the
        weights, the optimizer, the schedule, the loss scaler, each process's data position and random
        state), else evaluate once before training."""
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(model)
        module = SparseMaskedLM(model)
        optimizer = build_optimizer(module, cfg.learning_rate, cfg.weight_decay)
        processes = accelerator.num_processes
        state = TrainingState(0, cfg.to_dict(), {}, processes, [], [], {}, None,
                              fingerprint_files(guarded_files(cfg)))  # fmt: skip
        if cfg.max_steps:
            schedule = build_schedule(optimizer, cfg.warmup_steps, cfg.max_steps)
        else:  # --time-budget alone: the schedule's clock is the training time, resumed runs' included
            schedule = build_timed_schedule(
                optimizer, cfg.warmup_ratio, cfg.time_budget_seconds, lambda: state.seconds
            )
        module, optimizer = prepare_for_training(
            accelerator, module, optimizer, batch_size=cfg.batch_size,
            accumulation=cfg.gradient_accumulation_steps, max_grad_norm=cfg.max_grad_norm,
        )  # fmt: skip
        if cfg.compile:  # the encoder only: the head's shapes change with the number of masked tokens
            accelerator.unwrap_model(module).model.base_model.compile()
        rank = accelerator.process_index
        main = accelerator.is_main_process
        if main:
            effective = cfg.batch_size * cfg.gradient_accumulation_steps * processes
            print(
                f"{processes} process{'es' if processes > 1 else ''} on {accelerator.device}; effective "
                f"batch {effective} sequences per step ({cfg.batch_size} x {cfg.gradient_accumulation_steps} "
                f"accumulation x {processes}); {run_length(cfg)}."
            )
        if resumed is not None:
            model_state, optimizer_state, saved = resumed.load()
            load_full_state(accelerator.unwrap_model(module).model, optimizer, model_state, optimizer_state)
            restore_rng(saved.rng[rank])
            schedule.load_state_dict(saved.schedule)
            if accelerator.scaler is not None and saved.scaler:
                accelerator.scaler.load_state_dict(saved.scaler)
            loader.load_state_dict(saved.data[rank], saved.step * cfg.gradient_accumulation_steps)
            state.step, state.before = saved.step, saved.before
            state.best, state.stale_evals, state.seconds = saved.best, saved.stale_evals, saved.seconds
        output_dir = Path(cfg.output_dir)
        log = (
            MetricsLog(output_dir / "metrics.jsonl", keep_through_step=resumed and resumed.step)
            if main
            else None
        )
        start_trackers(accelerator, cfg.to_dict(), output_dir, cfg.run_name, resumed and resumed.step)
        session = cls(cfg, accelerator, module, optimizer, schedule, loader, held_out, scoring_sample, log,
                      state, steps_per_epoch)  # fmt: skip
        if resumed is not None:
            if main:
                print(f"Resuming from {resumed.path} (step {resumed.step} {of_steps(cfg)}); --no-resume "
                      "starts over.")  # fmt: skip
                drop_old_checkpoints(output_dir / "checkpoints", resumed.path)
        else:
            state.before = session.evaluate(0).as_dict()
        return session

    @property
    def model(self) -> torch.nn.Module:
        """The masked-LM model itself, unwrapped."""
        return self.accelerator.unwrap_model(self.module).model

    def evaluate(self, step: int) -> EvalMetrics:
        """The held-out metrics at `step`, logged and judged once (a run stopped early right after an
        evaluation ends with that one)."""
        if self.latest is not None and self.latest[0] == step:
            return self.latest[1]
        metrics = evaluate(
            self.accelerator.unwrap_model(self.module), self.held_out, self.accelerator, self.scoring_sample
        )
        self.latest = (step, metrics)
        self.write_log({"step": step, **{f"eval_{k}": v for k, v in metrics.as_dict().items()}})
        self.judge(step, metrics)
        return metrics

    def judge(self, step: int, metrics: EvalMetrics) -> None:
        """Keep track of the best evaluation (the lowest held-out loss, by at least
        --early-stopping-min-delta; a NaN is never best): with --save-best its weights are written to
        OUTPUT_DIR/best, and --early-stopping-patience evaluations without one end the run."""
        cfg, best = self.cfg, self.last.best
        if math.isfinite(metrics.loss) and (
            best is None or metrics.loss < best["loss"] - cfg.early_stopping_min_delta
        ):
            self.last.best, self.last.stale_evals = {"step": step, **metrics.as_dict()}, 0
            if cfg.save_best:
                self.save_best()
        else:
            self.last.stale_evals += 1
            if cfg.early_stopping_patience and self.last.stale_evals >= cfg.early_stopping_patience:
                self.stop_reason = (
                    f"early stopping: {self.last.stale_evals} evaluations without improvement on the "
                    f"held-out loss of step {self.last.best['step'] if self.last.best else 0}"
                )

    def save_best(self) -> None:
        """Write the weights of the best evaluation so far to OUTPUT_DIR/best (gathered whole from every
        process; the main one writes), where a resumed run finds them too."""
        weights, _ = full_state(self.model)
        if not self.accelerator.is_main_process:
            return

        def fill(folder: Path) -> None:
            save_file(weights, str(folder / BEST_WEIGHTS))
            (folder / "best.json").write_text(json.dumps(self.last.best), encoding="utf-8")

        write_folder(Path(self.cfg.output_dir) / "best", fill, what="the best model's folder")

    def write_log(self, record: dict) -> None:
        """A record to metrics.jsonl (on the main process) and to the --report-to trackers, at its step."""
        if self.log:
            self.log.append(record)
        log_to_trackers(self.accelerator, record)

    def fit(self, loop: Callable[..., int] = train_loop) -> None:
        """Train from the state's step to the last one, writing checkpoints as scheduled. On Ctrl-C the
        last completed step is saved, where that state is known: in a lone process without data workers.
        Several processes may stop at different steps, and data workers report their positions at
        checkpoint steps only: those resume from their last periodic checkpoint."""
        cfg, accelerator = self.cfg, self.accelerator
        peak = known_peak_flops(accelerator.device)
        flops = training_flops_per_token(self.model.config, cfg.max_length, cfg.mlm_probability)
        args = TrainArgs.of(
            cfg,
            flops_per_token=flops,
            peak_flops=peak * accelerator.num_processes if peak else None,
            steps_per_epoch=self.steps_per_epoch,
        )
        hooks = LoopHooks(on_log=self.write_log, on_eval=self.evaluate, on_step_end=self.end_step)
        start = self.last.step
        self.clock = time.perf_counter()
        processes, recomputed = accelerator.num_processes, cfg.gradient_checkpointing
        try:
            with cpu_training(self.model, accelerator.device, processes, cfg.compile, recomputed):
                loop(self.module, self.optimizer, self.schedule, self.loader, accelerator, args, start, hooks)
        except KeyboardInterrupt:
            if accelerator.num_processes > 1 or cfg.data_workers or self.last.step == start:
                raise
            self.save()
            raise TrainingInterrupted(resume_note(cfg, saved_now=True)) from None
        if accelerator.is_main_process and (note := self.ending()):
            print(note)

    def ending(self) -> str | None:
        """What ended the run, when that is worth saying: early stopping or the time budget, or, with
        --num-epochs, the epochs or --max-steps."""
        step = self.last.step
        if self.stop_reason:
            return f"Stopped after step {step} {of_steps(self.cfg)}: {self.stop_reason}."
        if self.steps_per_epoch:
            done, epochs = step / self.steps_per_epoch, self.cfg.num_epochs
            if step < math.ceil(epochs * self.steps_per_epoch):
                return f"--max-steps {self.cfg.max_steps} ended the run at epoch {done:.2f} of {epochs:g}."
            return f"{self.cfg.num_epochs:g} epochs done in {step} steps."
        return None

    def end_step(self, step: int) -> bool:
        """After each optimizer step: note the state it ends in, write a checkpoint when one is due
        (every --checkpoint-every steps, and after the last: the steps whose data positions the batch
        workers report), and say whether the run ends here (early stopping, the time budget)."""
        self.last.step, self.last.schedule = step, self.schedule.state_dict()
        self.last.data, self.last.rng = [self.loader.state_dict()], [rng_state()]  # this process's
        if self.accelerator.scaler is not None:
            self.last.scaler = self.accelerator.scaler.state_dict()
        now = time.perf_counter()
        self.last.seconds, self.clock = self.last.seconds + now - self.clock, now
        budget = self.cfg.time_budget_seconds
        # The same decision in every process: its time is the main process's.
        if budget and gather_from_processes(self.accelerator, self.last.seconds >= budget)[0]:
            self.stop_reason = f"the time budget ({self.cfg.time_budget}) was spent at step {step}"
        if CheckpointSchedule.of(self.cfg).due(step):
            self.save()
        return self.stop_reason is not None  # the loop stops after this step

    def save(self) -> None:
        """Write a checkpoint of `last`: every process hands its data position and random state to the
        main process, and the model's and optimizer's states are gathered whole (from FSDP shards or
        ZeRO partitions); the main process writes."""
        data, rngs = zip(*gather_from_processes(self.accelerator, (self.last.data[0], self.last.rng[0])))
        model_state, optimizer_state = full_state(self.model, self.optimizer)
        if not self.accelerator.is_main_process:
            return
        state = TrainingState(**{**vars(self.last), "data": list(data), "rng": list(rngs)})
        folder = Path(self.cfg.output_dir) / "checkpoints"
        try:
            save_checkpoint(folder, state, model_state, optimizer_state)
        except WriteError as error:
            previous = complete_checkpoints(folder)
            kept = f"the previous one, {previous[0]}, is intact" if previous else "no earlier one exists"
            raise CheckpointError(
                f"Could not write the checkpoint of step {state.step} ({error.cause}); {kept}. Free some "
                "space, or check that the folder is writable, and run the same command again to resume."
            ) from None
