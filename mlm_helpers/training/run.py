"""One fine-tuning job from a config: data, model, evaluation before, training, evaluation after, save.

`train(cfg)` is what the command line and the notebook call. It checks everything it can before any
download, then reports through `outputs/metrics.jsonl`, `outputs/loss.png` and `outputs/summary.json`.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from itertools import islice
from pathlib import Path

import torch
from accelerate.utils import set_seed

from ..config import ConfigError, TrainConfig
from ..data.batches import CheckpointSchedule, StreamBatches, TrackedBatches
from ..data.examples import make_examples
from ..data.masking import MaskedLanguageModelingDataset, MaskingRule, Vocabulary, collate
from ..data.sources import TextSource, iter_texts, open_stream, split_stream
from ..data.stream import ExampleStream
from ..fileio import check_replaceable, locked_folder, write_text_atomic
from ..hardware import known_peak_flops, resolve_mixed_precision
from ..hub import in_hub_cache, require_hub
from ..mlm_head import SparseMaskedLM
from ..modeling import (
    build_scratch_model,
    check_max_length,
    enable_activation_checkpointing,
    load_model,
    scratch_vocab_size,
    train_wordpiece_tokenizer,
)
from .checkpoints import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    check_data_files,
    check_processes,
    complete_checkpoints,
    drop_old_checkpoints,
    fingerprint_files,
    latest_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .distributed import (
    full_state,
    gather_from_processes,
    load_full_state,
    make_accelerator,
    prepare_for_training,
    shard_rows,
)
from .flops import training_flops_per_token
from .loop import EvalMetrics, build_optimizer, build_schedule, evaluate, train_loop
from .outputs import MetricsLog, RunResult, model_card, plot_losses, save_model

# Held-out examples are masked once with this seed, whatever the run's seed, so that evaluations
# before and after training, and across runs, score exactly the same tokens.
EVAL_SEED = 20_240_601
TOKENIZER_TRAINING_ROWS = 200_000  # enough text for a small vocabulary; bounds the time on big streams


def masking_rule(cfg: TrainConfig) -> MaskingRule:
    return MaskingRule(
        cfg.mlm_probability, cfg.mask_replace_prob, cfg.random_replace_prob, cfg.whole_word_masking
    )


def load_model_for(cfg: TrainConfig, train_rows) -> tuple[torch.nn.Module, object]:
    """The model and tokenizer a config names; a scratch model gets a vocabulary trained on `train_rows`."""
    if not cfg.is_scratch:
        return load_model(cfg.model, max_length=cfg.max_length)
    texts = islice(iter_texts(train_rows, cfg.text_column), TOKENIZER_TRAINING_ROWS)
    tokenizer = train_wordpiece_tokenizer(texts, scratch_vocab_size(cfg.model), max_length=512)
    model = build_scratch_model(cfg.model.split(":", 1)[1], len(tokenizer), seed=cfg.seed)
    check_max_length(model.config, cfg.max_length)
    return model, tokenizer


def eval_batches(rows, tokenizer, cfg: TrainConfig, vocab: Vocabulary) -> list[dict[str, torch.Tensor]]:
    """The held-out rows, tokenized like training data and masked once with EVAL_SEED."""
    examples = list(
        make_examples(
            iter_texts(rows, cfg.text_column), tokenizer, cfg.max_length, cfg.packing, drop_last=False
        )
    )
    masked = list(
        MaskedLanguageModelingDataset(examples, vocab=vocab, rule=masking_rule(cfg), seed=EVAL_SEED)
    )
    pad = tokenizer.pad_token_id
    return [collate(masked[i : i + cfg.batch_size], pad) for i in range(0, len(masked), cfg.batch_size)]


def training_batches(rows, tokenizer, vocab: Vocabulary, cfg: TrainConfig, rank: int = 0,
                     world_size: int = 1) -> TrackedBatches:  # fmt: skip
    """Process `rank`'s training batches: one stream per DataLoader worker (one without workers), each
    over its own share of the rows, masking its examples as examples of the whole run (see
    MaskedLanguageModelingDataset). Raises ConfigError if a share cannot fill one example."""
    per_process = max(cfg.data_workers, 1)
    streams = []
    for index in range(per_process):
        share, shares = rank * per_process + index, world_size * per_process
        examples = ExampleStream(shard_rows(rows, share, shares), cfg.text_column, tokenizer,
                                 cfg.max_length, cfg.packing, cfg.shuffle_buffer, cfg.seed)  # fmt: skip
        start = examples.state_dict()
        next(iter(examples))  # fails here, not in a worker, if this share cannot fill one example
        examples.load_state_dict(start)
        streams.append(MaskedLanguageModelingDataset(
            examples, vocab=vocab, rule=masking_rule(cfg), seed=cfg.seed, rank=share, world_size=shares
        ))  # fmt: skip
    source = StreamBatches(streams, cfg.batch_size, tokenizer.pad_token_id, CheckpointSchedule.of(cfg))
    return TrackedBatches(source, cfg.data_workers, cfg.seed)


def prepare(cfg: TrainConfig, rank: int = 0, world_size: int = 1):
    """Open the data and load the model: everything that can fail on bad input, before training.

    Local data is checked before any download; a Hub model's small config (and its length limit) is
    checked before its weights. Process `rank` of `world_size` gets its own share of the training rows
    and its own masks; the model, the tokenizer and the held-out batches are the same in every process.
    """
    source = TextSource.from_config(cfg)
    stream = open_stream(source) if source.data_files else None  # local files: no network needed
    needs = [f"the dataset {cfg.dataset!r}"] if stream is None else []
    if not (cfg.is_scratch or Path(cfg.model).exists() or in_hub_cache(cfg.model)):
        needs.append(f"the model {cfg.model!r}")
    if needs:
        require_hub(" and ".join(needs))  # one clear message, in seconds, when offline
    stream = stream or open_stream(source)
    held_out, train_rows = split_stream(stream, cfg.eval_size, cfg.text_column)
    model, tokenizer = load_model_for(cfg, train_rows)
    vocab = Vocabulary.from_tokenizer(tokenizer)
    loader = training_batches(train_rows, tokenizer, vocab, cfg, rank, world_size)
    return model, tokenizer, loader, eval_batches(held_out, tokenizer, cfg, vocab)


def train(cfg: TrainConfig) -> RunResult:
    """Fine-tune the model a config names on its data, and save it; see the module docstring.

    With ``cfg.resume`` and a checkpoint in ``cfg.output_dir``, training continues from it exactly:
    the same examples, masks and random numbers as an uninterrupted run. Launched as several processes
    (torchrun, accelerate launch), each trains on its own share of the data, gradients are averaged, and
    only the main process writes files.
    """
    started = time.perf_counter()
    check_output_paths(cfg)
    precision = resolve_mixed_precision(cfg.mixed_precision)
    accelerator = make_accelerator(precision)
    with ExitStack() as held:  # the output folder's lock, once taken
        return _train(cfg, accelerator, precision, started, held)


def check_output_paths(cfg: TrainConfig) -> None:
    """Refuse, before any work, output paths that a run would have to overwrite: a file where the output
    folder goes, and a model folder that holds anything but a model saved here."""
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(
            f"--output-dir {cfg.output_dir} is a file, not a folder: choose another path, or move it away."
        )
    check_replaceable(cfg.model_dir, "--model-dir")


def checkpoint_to_resume(cfg: TrainConfig, accelerator) -> Checkpoint | None:
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
        check_data_files(resumed.trainer.get("data_files"), cfg.data_files or [], force=cfg.force_resume)
        check_processes(resumed.trainer, accelerator.num_processes)
    return resumed


def lock_output_dir(cfg: TrainConfig, resumed: Checkpoint | None, held: ExitStack) -> None:
    """Take the output folder's lock for the rest of the run: a second run there would interleave its
    metrics and checkpoints with ours. Taken once the inputs are checked, so that a run refused for bad
    input leaves nothing behind, not even the folder; a checkpoint written meanwhile by another run
    (which then held the lock) is refused rather than overwritten."""
    held.enter_context(locked_folder(cfg.output_dir, "--output-dir"))
    if cfg.resume:
        newest = latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
        if (newest and newest.step) != (resumed and resumed.step):
            raise CheckpointError(
                f"Another run wrote checkpoints in --output-dir {cfg.output_dir} while this one started "
                "(it has finished since): run the command again to resume from them."
            )


def _train(cfg: TrainConfig, accelerator, precision: str, started: float, held: ExitStack) -> RunResult:
    rank, processes, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    # Dropout draws from the global generator: seeded from the config, differently in each process
    # (process 0 keeps the seed itself, so a one-process run is unchanged).
    set_seed(cfg.seed + rank)
    resumed = checkpoint_to_resume(cfg, accelerator) if cfg.resume else None  # before reading the data
    model, tokenizer, loader, held_out = prepare(cfg, rank, processes)
    if main:  # only the main process writes
        lock_output_dir(cfg, resumed, held)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    module = SparseMaskedLM(model)
    optimizer = build_optimizer(module, cfg.learning_rate, cfg.weight_decay)
    schedule = build_schedule(optimizer, cfg.warmup_steps, cfg.max_steps)
    module, optimizer = prepare_for_training(
        accelerator, module, optimizer, batch_size=cfg.batch_size,
        accumulation=cfg.gradient_accumulation_steps, max_grad_norm=cfg.max_grad_norm,
    )  # fmt: skip
    unwrapped = accelerator.unwrap_model(module)
    if cfg.compile:  # the encoder only: the head's shapes change with the number of masked tokens
        unwrapped.model.base_model.compile()
    flops_per_token = training_flops_per_token(model.config, cfg.max_length, cfg.mlm_probability)
    peak = known_peak_flops(accelerator.device)
    effective_batch = cfg.batch_size * cfg.gradient_accumulation_steps * processes
    if main:
        print(
            f"{processes} process{'es' if processes > 1 else ''} on {accelerator.device}; effective batch "
            f"{effective_batch} sequences per step ({cfg.batch_size} x {cfg.gradient_accumulation_steps} "
            f"accumulation x {processes}); {cfg.max_steps} steps."
        )

    output_dir = Path(cfg.output_dir)
    checkpoints = output_dir / "checkpoints"
    if resumed is not None:
        if main:
            where = f"{resumed.path} (step {resumed.step} of {cfg.max_steps})"
            print(f"Resuming from {where}; --no-resume starts over.")
            drop_old_checkpoints(checkpoints, resumed.path)
        model_state, optimizer_state, rngs = resumed.load()
        load_full_state(unwrapped.model, optimizer, model_state, optimizer_state)
        restore_rng(rngs["per_process"][rank])
        schedule.load_state_dict(resumed.trainer["schedule"])
        if accelerator.scaler is not None and resumed.trainer.get("scaler"):
            accelerator.scaler.load_state_dict(resumed.trainer["scaler"])
        loader.load_state_dict(resumed.trainer["data"][rank], resumed.step * cfg.gradient_accumulation_steps)
    keep = resumed.step if resumed else None
    log = MetricsLog(output_dir / "metrics.jsonl", keep_through_step=keep) if main else None
    write_log = log.append if log else lambda record: None

    def run_eval(step: int) -> EvalMetrics:
        metrics = evaluate(unwrapped, held_out, accelerator)
        write_log({"step": step, **{f"eval_{k}": v for k, v in metrics.as_dict().items()}})
        return metrics

    before = EvalMetrics(**resumed.trainer["before"]) if resumed else run_eval(0)
    last = {}  # the state after the last completed step: what a checkpoint holds

    due = CheckpointSchedule.of(cfg).due  # the steps whose data positions the batch workers report

    def on_step_end(step: int) -> None:
        last.update(step=step, data=loader.state_dict(), rng=rng_state(), schedule=schedule.state_dict())
        if due(step):  # every --checkpoint-every steps, and the last
            save()

    def save() -> None:
        # Every process hands its data position and random state to the main process, which writes.
        data, rngs = zip(*gather_from_processes(accelerator, (last["data"], last["rng"])))
        model_state, optimizer_state = full_state(unwrapped.model, optimizer)  # gathers FSDP shards
        if not main:
            return
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        trainer = {"config": cfg.to_dict(), "before": before.as_dict(), "processes": processes,
                   "data": list(data), "schedule": last["schedule"], "scaler": scaler,
                   "data_files": data_files}  # fmt: skip
        try:
            save_checkpoint(checkpoints, last["step"], model_state, optimizer_state, trainer,
                            {"per_process": list(rngs)})  # fmt: skip
        except OSError as error:
            previous = complete_checkpoints(checkpoints)
            kept = f"the previous one, {previous[0]}, is intact" if previous else "no earlier one exists"
            raise CheckpointError(
                f"Could not write the checkpoint of step {last['step']} ({error}); {kept}."
            ) from None

    data_files = fingerprint_files(cfg.data_files or [])  # what a resume must find unchanged
    start_step = resumed.step if resumed else 0
    last["step"] = start_step
    try:
        train_loop(module, optimizer, schedule, loader, accelerator, max_steps=cfg.max_steps,
                   start_step=start_step, accumulation=cfg.gradient_accumulation_steps,
                   max_grad_norm=cfg.max_grad_norm, max_nonfinite_steps=cfg.max_nonfinite_steps,
                   log_every=cfg.log_every, eval_every=cfg.eval_every, on_log=write_log, on_eval=run_eval,
                   on_step_end=on_step_end, progress=cfg.progress, flops_per_token=flops_per_token,
                   peak_flops=peak * processes if peak else None)  # fmt: skip
    except KeyboardInterrupt:
        # Several processes may be stopped at different steps, and data workers know their positions
        # at checkpoint steps only: a lone process without workers saves here; others resume from
        # their last periodic checkpoint.
        if processes == 1 and not cfg.data_workers and "data" in last and last["step"] > start_step:
            save()
        raise
    after = run_eval(cfg.max_steps)

    result = RunResult(
        before, after, Path(cfg.model_dir), output_dir, cfg.max_steps, time.perf_counter() - started,
        str(accelerator.device), precision, log.records if log else [], processes, main,
    )  # fmt: skip
    weights, _ = full_state(unwrapped.model)  # gathers FSDP shards
    if main:
        save_model(unwrapped.model, tokenizer, cfg.model_dir, model_card(cfg, result), weights)
        plot_losses(log.records, output_dir / "loss.png")
        summary = {
            "config": cfg.to_dict(),
            "before": before.as_dict(),
            "after": after.as_dict(),
            "steps": cfg.max_steps,
            "seconds": result.seconds,
            "device": result.device,
            "mixed_precision": precision,
            "processes": processes,
            "effective_batch_size": effective_batch,
        }
        write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()  # no process reports success before the model is saved
    return result


def evaluate_config(cfg: TrainConfig) -> EvalMetrics:
    """Evaluate the model a config names on its held-out examples, without training."""
    accelerator = make_accelerator(resolve_mixed_precision(cfg.mixed_precision))
    model, tokenizer, _, held_out = prepare(cfg, accelerator.process_index, accelerator.num_processes)
    module = SparseMaskedLM(model).to(accelerator.device)
    return evaluate(module, held_out, accelerator)
