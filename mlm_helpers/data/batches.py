"""Training batches, made in the training process or ahead of it in DataLoader worker processes.

With `--data-workers N` each of N worker processes reads its own share of the rows and tokenizes,
packs, masks and batches them, so that a fast GPU does not wait for text. DataLoader workers take
turns in a fixed order, so batch number g of the run comes from a known stream. A checkpoint needs
each stream's position as it was after the checkpoint's last batch; workers read ahead, so each one
attaches its stream's position to the batches that are its last before a checkpoint (only those:
sending it with every batch cost more than making the batch). A resumed run lets its first worker
serve the stream whose turn is next: the same batches, in the same order, as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import ConfigError, TrainConfig
from .masking import MaskedLanguageModelingDataset


@dataclass(frozen=True)
class CheckpointSchedule:
    """Which optimizer steps end with a checkpoint, and how many batches a step takes.

    >>> CheckpointSchedule.of(cfg).due(500)  # True with --checkpoint-every 500
    """

    every: int  # 0: only at the end
    last_step: int | None  # None: a --time-budget run, without a last step known ahead
    accumulation: int = 1

    @classmethod
    def of(cls, cfg: TrainConfig) -> CheckpointSchedule:
        return cls(cfg.checkpoint_every, cfg.max_steps, cfg.gradient_accumulation_steps)

    def due(self, step: int) -> bool:
        """Whether a checkpoint is written after optimizer step `step`: every `every`, and the last."""
        return bool(self.every and step % self.every == 0) or step == self.last_step

    def last_before(self, batch: int, streams: int) -> bool:
        """Whether batch number `batch` (from 0) is its stream's last one before a checkpoint, that is,
        whether a checkpoint step ends at or after it and before that stream's next batch."""
        first_step = -(-(batch + 1) // self.accumulation)
        last_step = (batch + streams) // self.accumulation
        if self.last_step is not None:
            last_step = min(last_step, self.last_step)
        return any(self.due(step) for step in range(first_step, last_step + 1))


class StreamBatches(IterableDataset):
    """Endless batches from one masked example stream per worker (one in all without workers)."""

    def __init__(self, streams: list[MaskedLanguageModelingDataset], batch_size: int, pad_id: int,
                 schedule: CheckpointSchedule) -> None:  # fmt: skip
        self.streams, self.batch_size, self.pad_id = streams, batch_size, pad_id
        self.schedule = schedule
        self.first, self.consumed = 0, 0  # the first worker's stream; batches used before this run

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        workers, rank = (worker.num_workers, worker.id) if worker else (1, 0)
        if workers != len(self.streams):
            raise ConfigError(f"{len(self.streams)} data streams for {workers} DataLoader workers.")
        index = (rank + self.first) % workers
        masked = self.streams[index]
        batches = masked.batches(self.batch_size, self.pad_id)
        for number in range(self.consumed + rank, 2**62, workers):
            batch = next(batches)
            batch["stream"] = index
            if worker and self.schedule.last_before(number, workers):
                batch["state"] = masked.examples.state_dict()
            yield batch


class TrackedBatches:
    """Batches from `StreamBatches` through a DataLoader, and each stream's position for checkpoints.

    >>> source = StreamBatches(streams, 32, pad_id=0, schedule=CheckpointSchedule(every=500, last_step=2000))
    >>> batches = TrackedBatches(source, workers=2, seed=0)
    >>> batch = next(batches); saved = batches.state_dict()  # exact at checkpoint steps with workers
    """

    def __init__(self, source: StreamBatches, workers: int, seed: int) -> None:
        self.source, self.workers = source, workers
        self.loader = DataLoader(
            source,
            batch_size=None,  # StreamBatches makes the batches
            collate_fn=_as_is,
            num_workers=workers,
            # Its own generator: a DataLoader otherwise draws a seed from the global generator each
            # time it is iterated, which would shift the dropout draws of a resumed run.
            generator=torch.Generator().manual_seed(seed),
            pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU without a stall
        )
        self.states = [stream.examples.state_dict() for stream in source.streams]
        self.next = 0
        self._batches: Iterator[dict] | None = None

    def __iter__(self) -> TrackedBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._batches is None:
            self._batches = iter(self.loader)
        batch = next(self._batches)
        index = batch.pop("stream")
        if "state" in batch:
            self.states[index] = batch.pop("state")
        self.next = (index + 1) % len(self.states)
        return batch

    def state_dict(self) -> dict:
        """Where every stream is and whose turn is next, JSON-able. Without workers it is exact after
        any batch; with workers, after the last batch of a checkpoint step (the others are stale)."""
        states = self.states if self.workers else [s.examples.state_dict() for s in self.source.streams]
        return {"streams": list(states), "next": self.next}

    def load_state_dict(self, state: dict, consumed: int) -> None:
        """Continue from a `state_dict()` taken after `consumed` batches; before the first batch."""
        if not isinstance(state, dict) or len(state.get("streams", ())) != len(self.states):
            raise ConfigError(
                "The checkpoint's data position was written by another version of mlm_helpers or with "
                "another --data-workers. Use the same settings, or --no-resume to start over."
            )
        for masked, saved in zip(self.source.streams, state["streams"], strict=True):
            masked.examples.load_state_dict(saved)
            masked.start = masked.examples.position  # masks keep counting where the checkpoint stopped
        self.states = [stream.examples.state_dict() for stream in self.source.streams]
        self.next = self.source.first = state["next"]
        self.source.consumed = consumed


def _as_is(batch: dict) -> dict:
    # The DataLoader's default would walk every list in a stream's state, at great cost.
    return batch
