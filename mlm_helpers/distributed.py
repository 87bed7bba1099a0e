"""One training run over several processes: joining them, splitting the data, and the few collectives.

Launchers (`torchrun`, `accelerate launch`) start the processes; Accelerate joins them into one group
and wraps the model in DistributedDataParallel. Everything here is a thin layer over that. With one
process every function is the identity, so a single-process run does exactly what it did before.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from datasets.distributed import split_dataset_by_node

from .config import ConfigError


def launched_processes() -> int:
    """How many processes the launcher started (torchrun and `accelerate launch` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator that joins every launched process, on GPUs or, without CUDA, on CPUs (gloo).

    Measured with accelerate 1.15: under torchrun on a CPU-only machine a plain `Accelerator()` leaves
    each process alone as "rank 0 of 1", so N independent runs would write the same files. Asking for
    the CPU explicitly makes it join them (MULTI_CPU over gloo).
    """
    launched = launched_processes()
    cpu = launched > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(
            f"{accelerator.distributed_type.value} (sharded training) is not supported yet: checkpoints and "
            "evaluation here assume every process holds the whole model. Use DistributedDataParallel: "
            "configs/multi_gpu.yaml, configs/multi_node.yaml or torchrun."
        )
    if accelerator.num_processes != launched:
        raise ConfigError(
            f"The launcher started {launched} processes but they did not join one group "
            f"({accelerator.num_processes} found). Launch with `torchrun --nproc_per_node N -m mlm_helpers "
            "train ...` or `accelerate launch --config_file configs/<file>.yaml -m mlm_helpers train ...`."
        )
    return accelerator


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
