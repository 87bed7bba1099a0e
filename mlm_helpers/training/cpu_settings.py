"""What `train` sets around its loop on a CPU for speed: the heap kept (hardware.heap_kept), the tied
word embedding's gradient rows added in place (mlm_head.embedding_gradient_in_place), dropout's masks
from a third of the random draws (dropout.cpu_dropout). The model computes the same function and the
same gradients; only dropout's masks are others, drawn from the same distribution and the same seeded
generator. docs/benchmarks.md measures each."""

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
    in a lone process whose model is not compiled, the embedding's gradient rows in place (DDP, FSDP
    and DeepSpeed reduce or shard a gradient as soon as autograd has made it, before the rows would be
    added; a compiled graph makes its own) and, for a model with dropout, the cheaper dropout, unless
    activations are `recomputed` in the backward pass, which runs outside the block and so would draw
    PyTorch's masks instead of the forward's."""
    on_cpu = device.type == "cpu"
    lone = on_cpu and processes == 1 and not compiled
    with (
        heap_kept(on_cpu),
        embedding_gradient_in_place(model, enabled=lone),
        cpu_dropout(lone and not recomputed and has_dropout(model)),
    ):
        yield
