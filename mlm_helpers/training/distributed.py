"""One training run over several processes: joining them, splitting the data, sharding the model, and
the few collectives.

Launchers (`torchrun`, `accelerate launch`) start the processes; Accelerate joins them into one group
and wraps the model: in DistributedDataParallel by default, shards it with FSDP2, or hands it to a
DeepSpeed ZeRO 1/2 engine (see deepspeed_zero.py) when its config asks for it. Everything here is a
thin layer over that. With one process every function is the identity, so a single-process run does
exactly what it did before.

The experiment trackers of --report-to run through Accelerate too (`make_accelerator`, `start_trackers`):
only the main process reports to them.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, gather_object
from datasets.distributed import split_dataset_by_node
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from ..config import ConfigError
from ..fileio import write_text_atomic
from . import deepspeed_zero


def launched_processes() -> int:
    """How many processes the launcher started (torchrun and `accelerate launch` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(
    mixed_precision: str, report_to: str = "none", output_dir: str | Path = "."
) -> Accelerator:
    """An Accelerator that joins every launched process, on GPUs or, without CUDA, on CPUs (gloo); with
    `report_to` (--report-to) it reports to that tracker, whose files go to OUTPUT_DIR/runs.

    Measured with accelerate 1.15: under torchrun on a CPU-only machine a plain `Accelerator()` leaves
    each process alone as "rank 0 of 1", so N independent runs would write the same files. Asking for
    the CPU explicitly makes it join them (MULTI_CPU over gloo).
    """
    check_tracker_installed(report_to)  # before any data or model is read
    tracking = (
        {} if report_to == "none" else {"log_with": report_to, "project_dir": Path(output_dir) / "runs"}
    )
    launched = launched_processes()
    cpu = launched > 1 and not torch.cuda.is_available()
    if launched == 1 and hasattr(AcceleratorState, "_reset_state"):
        # Accelerate keeps one shared state per process: a second run in the same process (a notebook,
        # the tests) would inherit the first one's mixed precision, or be refused with "AcceleratorState
        # has already been initialized" if it asks for another. Each run starts from its own settings.
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu, **tracking)
    # getattr: Accelerate releases before FSDP2 have no is_fsdp2, and their FSDP is version 1
    if accelerator.distributed_type == DistributedType.FSDP and not getattr(accelerator, "is_fsdp2", False):
        raise ConfigError(
            "FSDP version 1 is not supported: set `fsdp_version: 2` in the Accelerate config (see "
            "configs/fsdp.yaml; it needs Accelerate 1.6 or later)."
        )
    # Accelerate gives FSDP and DeepSpeed to accelerators only; CPU processes quietly get DDP.
    sharding = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}
    asked = [name for name, variable in sharding.items() if os.environ.get(variable, "").lower() == "true"]
    ran = accelerator.distributed_type
    if asked and ran not in (DistributedType.FSDP, DistributedType.DEEPSPEED) and accelerator.is_main_process:
        print(f"Note: the Accelerate config asks for {asked[0]}, which Accelerate runs on GPUs only: these "
              f"processes train without it ({ran.value}).", file=sys.stderr)  # fmt: skip
    if accelerator.num_processes != launched:
        raise ConfigError(
            f"The launcher started {launched} processes but they did not join one group "
            f"({accelerator.num_processes} found). Launch with `torchrun --nproc_per_node N -m mlm_helpers "
            "train ...` or `accelerate launch --config_file configs/<file>.yaml -m mlm_helpers train ...`."
        )
    return accelerator


# The package each --report-to tracker needs ("all" takes whichever Accelerate finds installed).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
# The project the runs are filed under (wandb, trackio, mlflow's experiment; TensorBoard's sub-folder).
TRACKER_PROJECT = "bert-mlm-finetuning"


def package_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_tracker_installed(report_to: str) -> None:
    """ConfigError, naming the pip command, when the package of the --report-to tracker is missing."""
    package = TRACKER_PACKAGES.get(report_to)
    if package and not package_installed(package):
        raise ConfigError(
            f"--report-to {report_to} needs the {package} package, which is not installed: "
            f"pip install {package} (or leave the tracker out with --report-to none)."
        )


def tracker_config(config: dict) -> dict[str, bool | int | float | str | None]:
    """A run's settings as trackers take hyperparameters: scalars as they are, anything else (lists)
    as a string."""
    return {
        k: v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()
    }


def start_trackers(accelerator: Accelerator, config: dict, output_dir: str | Path, run_name: str | None,
                   resumed_step: int | None) -> None:  # fmt: skip
    """Open the run in the --report-to trackers, with `config` as its hyperparameters; a no-op without
    one. The run is named `run_name` (default: the output folder's name). A resumed run continues where
    the tracker allows it: TensorBoard appends to the same folder and hides what the interrupted run
    logged after `resumed_step` (as metrics.jsonl drops it), wandb resumes the run whose id is kept in
    OUTPUT_DIR/runs/run_id, and mlflow and trackio get the same run name. A run that starts over gets
    a new id, and TensorBoard hides everything logged there before."""
    if not accelerator.log_with or not accelerator.is_main_process:
        return
    runs = Path(output_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    name = run_name or Path(output_dir).resolve().name
    id_file = runs / "run_id"
    if resumed_step is None or not id_file.is_file():
        write_text_atomic(id_file, uuid.uuid4().hex[:16] + "\n")
    run_id = id_file.read_text(encoding="utf-8").strip()
    init_kwargs = {
        # purge_step: TensorBoard hides the events of this folder from that step on, older files included
        "tensorboard": {"purge_step": 0 if resumed_step is None else resumed_step + 1},
        "wandb": {"name": name, "id": run_id, "resume": "allow", "dir": str(runs)},
        "mlflow": {"run_name": name},
        "trackio": {"name": name, "resume": "allow"},
    }
    accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(config), init_kwargs=init_kwargs)


def log_to_trackers(accelerator: Accelerator, record: dict) -> None:
    """A metrics.jsonl record to the trackers, at its step: its finite numbers (a NaN is left out)."""
    if accelerator.trackers:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                  and math.isfinite(v)}  # fmt: skip
        accelerator.log(values, step=record["step"])


def end_trackers(accelerator: Accelerator) -> None:
    """Close the trackers' runs, after a run or its failure. Accelerate's `end_training` would also
    destroy the process group, which the launcher owns: a process that failed would then hang in it
    while the others still wait in a collective (NCCL), instead of leaving with its error."""
    for tracker in accelerator.trackers:
        tracker.finish()


def leave_process_group() -> None:
    """End this process's part in the job's process group, once its command has succeeded. A process
    that exits with the group still open can abort after its work is done: gloo's worker threads
    outlive the interpreter's teardown ("terminate called without an active exception", as in
    pytorch/pytorch#190489). Not called after a failure, for the reason `end_trackers` gives."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard_rows(rows: datasets.IterableDataset, rank: int, world_size: int) -> datasets.IterableDataset:
    """This process's share of the rows: whole shards (files) when their count divides evenly between
    the processes, otherwise every `world_size`-th row. Processes never read the same row."""
    if world_size == 1:
        return rows
    return split_dataset_by_node(rows, rank=rank, world_size=world_size)


def sum_over_processes(accelerator: Accelerator, *values: float) -> list[float]:
    """Each value summed over all processes (one small all-reduce); the values as given with one."""
    if accelerator.num_processes == 1:
        return list(values)
    # float64 so that counts of tokens stay exact
    total = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum")
    return total.tolist()


def gather_from_processes(accelerator: Accelerator, value: Any) -> list[Any]:
    """`value` from every process, in rank order (any picklable object)."""
    if accelerator.num_processes == 1:
        return [value]
    return gather_object([value])


def uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


@contextmanager
def micro_batch(accelerator: Accelerator, module: torch.nn.Module, last: bool) -> Iterator[None]:
    """Around one micro-batch's forward and backward pass: gradients are synchronised across processes
    (DDP) or the DeepSpeed engine steps only in the `last` micro-batch of an optimizer step."""
    if uses_deepspeed(accelerator):
        # Accelerate's DeepSpeed backward steps the engine when sync_gradients is set. Every Accelerator
        # of the process shares it (in a notebook, the next run's too), so it is always put back.
        accelerator.sync_gradients = last
        try:
            yield
        finally:
            accelerator.sync_gradients = True
    elif last:
        yield
    else:
        with accelerator.no_sync(module):
            yield


def prepare_for_training(accelerator: Accelerator, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         *, batch_size: int, accumulation: int, max_grad_norm: float):  # fmt: skip
    """`accelerator.prepare` for training: the module wrapped (DDP), sharded (FSDP2) or handed to a
    DeepSpeed engine (whose config gets the batch size, accumulation and clipping given here), and its
    optimizer."""
    if uses_deepspeed(accelerator):
        deepspeed_zero.configure(accelerator.state.deepspeed_plugin.deepspeed_config, batch_size,
                                 accumulation, max_grad_norm, accelerator.num_processes)  # fmt: skip
    tied = {name for pair in tied_names(module).items() for name in pair}
    module, optimizer = accelerator.prepare(module, optimizer)
    unwrapped = accelerator.unwrap_model(module)
    # FSDP would fail at the first forward, deep inside torch, if a tied weight's two owners landed in
    # different shard units: only the root unit may hold one.
    for name, unit in unwrapped.named_modules():
        if not name or not isinstance(unit, FSDPModule):
            continue
        if any(f"{name}.{p}" in tied for p, _ in unit.named_parameters(remove_duplicate=False)):
            raise ConfigError(
                f"FSDP was set to shard {name} ({type(unit).__name__.removeprefix('FSDP')}) on its own, "
                "but it holds a weight tied to another module's (BERT's input embeddings are its output "
                "projection). Name only the encoder's layer class (BertLayer) in "
                "fsdp_transformer_layer_cls_to_wrap, or leave it out as configs/fsdp.yaml does."
            )
    # Evaluation calls masked_logits, not forward: FSDP must gather the sharded weights for it too
    # (a no-op for a module FSDP does not manage).
    register_fsdp_forward_method(unwrapped, "masked_logits")
    return module, optimizer


# Whole tensors on the CPU, in the main process only: what it writes to disk.
GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True)


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """{second name: first name} of each parameter registered under several names (BERT's output
    projection is its input embedding)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """The whole model's state (each tied parameter once) and the optimizer's, both keyed by parameter
    name, on the CPU of the main process; other processes get empty dicts.

    Under FSDP and DeepSpeed the shards are gathered, so every process must call this. The result is
    the same with one process, several (DDP) or sharded (FSDP, ZeRO): checkpoints written by one resume
    in another.
    """
    if deepspeed_zero.is_partitioned(model):
        model_state, optimizer_state = deepspeed_zero.gathered_state(model, optimizer)
    elif optimizer is None:
        model_state, optimizer_state = get_model_state_dict(model, options=GATHERED), {}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer, options=GATHERED)
    aliases = tied_names(model)
    return {name: value for name, value in model_state.items() if name not in aliases}, optimizer_state


def whole_model(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module | None:
    """The model with whole weights, for the main process to compute with alone: `model` itself where
    each process holds the weights whole (one process, DDP, DeepSpeed ZeRO 1/2); under FSDP a copy
    built from the gathered weights on the main process, None on the others. Every process calls it.
    (A sharded model cannot run on one process: its forward pass gathers weights from all of them.)"""
    if not any(isinstance(param, DTensor) for param in model.parameters()):
        return model
    weights, _ = full_state(model)
    if not accelerator.is_main_process:
        return None
    # fully_shard gives a sharded module a class of its own, "FSDP" + the model's, above it
    kind = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    copy = kind(model.config)
    copy.load_state_dict({**weights, **{alias: weights[name] for alias, name in tied_names(copy).items()}})
    return copy.to(accelerator.device)


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:  # fmt: skip
    """Load what `full_state` returned into this process's model and optimizer (its shards, under FSDP).
    Every process calls it with the whole state."""
    model_state = {**model_state, **{alias: model_state[name] for alias, name in tied_names(model).items()}}
    if deepspeed_zero.is_partitioned(model):
        deepspeed_zero.load_gathered_state(model, optimizer, model_state, optimizer_state)
        return
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))  # fmt: skip
