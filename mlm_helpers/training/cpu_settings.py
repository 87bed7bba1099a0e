"""What `train` sets around its loop on a CPU for speed. None of it changes the model's arithmetic:
the heap kept (hardware.heap_kept), the tied word embedding's gradient rows added in place
(mlm_head.embedding_gradient_in_place), dropout's masks from a third of the random draws
(dropout.cpu_dropout). docs/benchmarks.md measures each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..hardware import heap_kept
from ..mlm_head import embedding_gradient_in_place
from .dropout import cpu_dropout, has_dropout


@contextmanager
def cpu_training(
    model, device: torch.device, processes: int, compiled: bool = False, recomputed: bool = False
) -> Iterator[None]:
    """Within the block, `model` trains with what suits a CPU: the heap kept whenever `device` is one;
    in a lone process whose model is not compiled (DDP, FSDP and DeepSpeed expect dense gradients, a
    compiled graph makes its own), the embedding's gradient rows in place and, unless activations are
    `recomputed` in the backward pass (which runs outside the block, so would draw other masks),
    the cheaper dropout, for a model that has some."""
    on_cpu = device.type == "cpu"
    lone = on_cpu and processes == 1 and not compiled
    with (
        heap_kept(on_cpu),
        embedding_gradient_in_place(model, enabled=lone),
        cpu_dropout(lone and not recomputed and has_dropout(model)),
    ):
        yield
