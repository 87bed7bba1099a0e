"""Optimizer groups, the learning-rate schedule, the training loop and evaluation.

The loop runs on Hugging Face Accelerate, which picks the device (CUDA, then MPS, then CPU) and
handles mixed precision. Streams have no length, so training is counted in optimizer steps.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from ..config import TrainConfig, config_default
from ..hardware import memory_gib, reset_peak_memory
from ..mlm_head import SparseMaskedLM
from .distributed import micro_batch, sum_over_processes, uses_deepspeed
from .flops import mfu
from .pseudo_perplexity import ScoringSample


@dataclass(frozen=True)
class EvalMetrics:
    """Masked-token metrics over the held-out examples."""

    loss: float  # mean cross-entropy per masked token
    perplexity: float
    top1: float  # share of masked tokens whose original is the top prediction
    top5: float
    tokens: int  # masked tokens scored
    pseudo_perplexity: float | None = None  # of the --pseudo-perplexity texts; None when off

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only: biases and LayerNorm weights are not decayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
        (no_decay if skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel updates all parameters in a few passes, on CUDA and (torch 2.4+) on CPUs: for
    # bert-base on one CPU thread its step took 161 ms against 992 ms, about 6% of a training step.
    fused = torch.cuda.is_available() or not torch.backends.mps.is_available()
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused or None)


def warmup_then_decay(step: int, warmup_steps: int, max_steps: int) -> float:
    """The learning rate at `step`, as a share of the peak: up from 0 over `warmup_steps`, then down in a
    straight line to 0 at `max_steps` (BERT's schedule, Devlin et al. 2019, appendix A.2).

    >>> [warmup_then_decay(step, 2, 6) for step in range(7)]
    [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


def build_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int) -> LambdaLR:
    """The optimizer's learning rates on `warmup_then_decay`, one step per optimizer step."""
    return LambdaLR(
        optimizer, functools.partial(warmup_then_decay, warmup_steps=warmup_steps, max_steps=max_steps)
    )


def build_timed_schedule(
    optimizer: torch.optim.Optimizer, warmup_ratio: float, budget: float, elapsed: Callable[[], float]
) -> LambdaLR:
    """`warmup_then_decay` over a time budget: the same shape, in seconds of training (`elapsed()`)
    instead of steps, for a run whose number of steps is not known ahead (--time-budget alone)."""
    return LambdaLR(optimizer, lambda step: warmup_then_decay(elapsed(), warmup_ratio * budget, budget))


@torch.no_grad()
def evaluate(
    module: SparseMaskedLM,
    batches: list[dict[str, torch.Tensor]],
    accelerator: Accelerator,
    sample: ScoringSample | None = None,
) -> EvalMetrics:
    """Loss, perplexity and top-1/top-5 accuracy over pre-masked batches (deterministic), and with
    `sample` the pseudo-perplexity of its texts.

    With several processes each scores every n-th batch and the sums are added up: every process
    returns the same figures, those of the whole list.
    """
    was_training = module.training
    module.eval()
    loss_sum, hits1, hits5, count = 0.0, 0, 0, 0
    rank, world = accelerator.process_index, accelerator.num_processes
    # Every process runs the same number of forward passes: under FSDP each one gathers the weights
    # from all processes, and one process missing a pass would leave the others waiting for ever. A
    # process whose turn has no batch left scores an earlier one again and does not count it.
    for index in range(rank, math.ceil(len(batches) / world) * world, world):
        batch = {k: v.to(accelerator.device) for k, v in batches[index % len(batches)].items()}
        with accelerator.autocast():
            logits, targets = module.masked_logits(**batch)
        if index >= len(batches):
            continue
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        best = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits1 += (best[:, 0] == targets).sum().item()
        hits5 += (best == targets[:, None]).any(dim=-1).sum().item()
        count += targets.numel()
    module.train(was_training)
    loss_sum, hits1, hits5, count = sum_over_processes(accelerator, loss_sum, hits1, hits5, count)
    pppl = sample.pseudo_perplexity(module.model, accelerator) if sample is not None else None
    if count == 0:
        return EvalMetrics(math.nan, math.nan, math.nan, math.nan, 0, pppl)
    loss = loss_sum / count
    return EvalMetrics(loss, math.exp(min(loss, 50.0)), hits1 / count, hits5 / count, int(count), pppl)


class NonFiniteError(RuntimeError):
    """Training produced non-finite gradients several steps in a row."""


@dataclass(frozen=True)
class TrainArgs:
    """The settings the loop reads (litgpt's TrainArgs): from a TrainConfig with `of`, or given; the
    defaults are TrainConfig's. `max_steps` is the run's, counted from --num-epochs if it gave them."""

    max_steps: int | None  # None: until a hook stops the run (--time-budget alone)
    accumulation: int = config_default("gradient_accumulation_steps")  # batches per optimizer step
    max_grad_norm: float = config_default("max_grad_norm")  # 0: no clipping (the norm is still logged)
    max_nonfinite_steps: int = config_default("max_nonfinite_steps")  # in a row: NonFiniteError
    log_every: int = config_default("log_every")
    eval_every: int = config_default("eval_every")  # 0: only before and after training (the run's job)
    progress: bool = config_default("progress")
    flops_per_token: float | None = None  # with it the log has model TFLOP/s,
    peak_flops: float | None = None  # and with this (all processes together) the MFU
    steps_per_epoch: int | None = None  # with it the log and the progress bar show the epoch

    @classmethod
    def of(cls, cfg: TrainConfig, **measured: float | None) -> TrainArgs:
        return cls(cfg.max_steps, cfg.gradient_accumulation_steps, cfg.max_grad_norm,
                   cfg.max_nonfinite_steps, cfg.log_every, cfg.eval_every, cfg.progress,
                   **measured)  # fmt: skip


@dataclass(frozen=True)
class LoopHooks:
    """Where the loop hands over to the run: a log record to write, an evaluation that is due, and the
    end of each optimizer step (where the run writes checkpoints and may stop)."""

    on_log: Callable[[dict], None] = lambda record: None
    on_eval: Callable[[int], None] = lambda step: None
    on_step_end: Callable[[int], bool | None] = lambda step: None  # True: stop after this step


# A log file (CI, SLURM, nohup) gets the progress bar's line this often at most, not once per step.
PROGRESS_SECONDS_WITHOUT_TTY = 30.0


def train_loop(
    module: SparseMaskedLM,
    optimizer: torch.optim.Optimizer,
    schedule,
    batches: Iterator[dict[str, torch.Tensor]],
    accelerator: Accelerator,
    args: TrainArgs,
    start_step: int = 0,
    hooks: LoopHooks = LoopHooks(),
) -> int:
    """Run optimizer steps `start_step + 1` to `args.max_steps` over `batches`; returns the steps skipped.

    Each step: forward and backward over `args.accumulation` batches, clip, step the optimizer and the
    schedule, log, evaluate when due, then `hooks.on_step_end(step)`. A step whose gradient norm is not
    finite changes nothing - weights, optimizer and schedule stay as they were - and is counted;
    `args.max_nonfinite_steps` of them in a row raise NonFiniteError. Each log record has the loss,
    learning rate, gradient norm, real (not padding) tokens per second of all processes, and with
    `args.flops_per_token` the model's TFLOP/s and, with `args.peak_flops`, its MFU, and this process's
    memory (`hardware.memory_gib`: on CUDA, the window's peak).

    The host waits for the device once per step, for the gradient norm that decides whether the step
    is taken; the losses stay on the device until a log step reads them. (A `.item()` per micro-batch
    would stall a GPU at every one.)
    """
    module.train()
    world = accelerator.num_processes
    # DeepSpeed would divide the loss by the accumulation count: it is already the step's mean.
    backward_options = {"scale_wrt_gas": False} if uses_deepspeed(accelerator) else {}
    show = args.progress and accelerator.is_main_process
    interval = 0.1 if sys.stderr.isatty() else PROGRESS_SECONDS_WITHOUT_TTY
    bar = tqdm(total=args.max_steps, initial=start_step, desc="training", disable=not show,
               dynamic_ncols=True, mininterval=interval, maxinterval=max(interval, 10.0))  # fmt: skip
    window_loss = torch.zeros((), device=accelerator.device)  # summed over the window's taken steps
    window_steps, window_tokens, window_start = 0, 0, time.perf_counter()
    skipped, skipped_in_a_row, skipped_in_window = 0, 0, 0
    reset_peak_memory(accelerator.device)  # the first window's peak is training's, not the evaluation's
    # No max_steps: a --time-budget run, which its end_step hook stops.
    steps = range(start_step + 1, args.max_steps + 1) if args.max_steps else itertools.count(start_step + 1)
    for step in steps:
        window = [next(batches) for _ in range(args.accumulation)]
        # The loss is the mean over the masked tokens of the whole step, all processes together: each
        # divides its sum by the total count, and scales by the process count since DDP averages.
        # (The batches are still on the host: counting their labels costs no device wait.)
        local_targets = sum(int((b["labels"] != -100).sum()) for b in window)
        (num_targets,) = sum_over_processes(accelerator, local_targets)
        step_loss = torch.zeros((), device=accelerator.device)
        for micro, batch in enumerate(window):
            window_tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            last = micro == args.accumulation - 1
            with micro_batch(accelerator, module, last=last):
                with accelerator.autocast():  # the forward pass only: backward ops take the precision
                    loss = module(**batch, num_targets=int(num_targets))  # of their forward ops
                accelerator.backward(loss * world if world > 1 else loss, **backward_options)
            step_loss += loss.detach()
        # The norm before clipping is what tells of trouble; with clipping off it is only measured. It
        # is the same on every process (the gradients are synchronised), and so are the decisions
        # taken on it. (A DeepSpeed engine has clipped and stepped, or skipped a non-finite step, in
        # backward: this returns the norm it measured, and optimizer.step() below does nothing.)
        grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), args.max_grad_norm or math.inf))
        lr = schedule.get_last_lr()[0]
        if accelerator.scaler is not None:
            optimizer.step()  # fp16: the loss scaler skips non-finite steps and lowers its scale
            stepped = not optimizer.step_was_skipped
        elif math.isfinite(grad_norm):
            optimizer.step()
            stepped = True
        else:
            stepped = False
        optimizer.zero_grad(set_to_none=True)
        if stepped:
            schedule.step()
            skipped_in_a_row = 0
            window_loss += step_loss
            window_steps += 1
        else:
            skipped, skipped_in_a_row, skipped_in_window = (
                skipped + 1,
                skipped_in_a_row + 1,
                skipped_in_window + 1,
            )
            if skipped_in_a_row >= args.max_nonfinite_steps:
                raise NonFiniteError(
                    f"The gradients were not finite for {skipped_in_a_row} steps in a row (up to step "
                    f"{step}); the weights were left unchanged. Lower --learning-rate, or use fp32 "
                    "(--mixed-precision no)."
                )

        if step % args.log_every == 0 or step == args.max_steps:
            elapsed = time.perf_counter() - window_start
            loss_sum, window_tokens = sum_over_processes(accelerator, float(window_loss), window_tokens)
            speed = window_tokens / max(elapsed, 1e-9)
            record = {
                "step": step,
                "loss": loss_sum / window_steps if window_steps else math.nan,
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "tokens_per_second": speed,
                "skipped_steps": skipped_in_window,
                **memory_gib(accelerator.device),  # this process's: now, and the window's peak
            }
            if args.steps_per_epoch:
                record["epoch"] = step / args.steps_per_epoch
            if args.flops_per_token:  # the model's own arithmetic per second, and its share of the peak
                record["model_tflops"] = speed * args.flops_per_token / 1e12
                if args.peak_flops:
                    record["mfu"] = mfu(speed, args.flops_per_token, args.peak_flops)
            hooks.on_log(record)
            epoch = {"epoch": f"{record['epoch']:.2f}"} if "epoch" in record else {}
            memory = {"mem": f"{record['peak_memory_gib']:.2f}GiB"} if "peak_memory_gib" in record else {}
            bar.set_postfix(
                **epoch,
                loss=f"{record['loss']:.3f}",
                lr=f"{lr:.2e}",
                tok_s=f"{speed:.0f}",
                **memory,
                refresh=False,
            )
            window_loss.zero_()
            window_steps, window_tokens, skipped_in_window = 0, 0, 0
            window_start = time.perf_counter()
        bar.update(1)
        paused = time.perf_counter()
        if args.eval_every and step % args.eval_every == 0 and step != args.max_steps:
            hooks.on_eval(step)
        stop = hooks.on_step_end(step)  # the run may end early: early stopping, the time budget
        window_start += time.perf_counter() - paused  # evaluation and saving are not training throughput
        if stop:
            break
    bar.close()
    return skipped
