"""What `train` sets around its loop on a CPU for speed: the heap kept (hardware.heap_kept), the tied
word embedding's gradient rows added in place (mlm_head.embedding_gradient_in_place), dropout's masks
from a third of the random draws (dropout.cpu_dropout), float32 linear layers' forward products by
oneDNN (onednn.onednn_training). The model computes the same function and the same gradients, the
products with oneDNN's rounding; dropout's masks are others, drawn from the same distribution and the
same seeded generator. docs/benchmarks.md measures each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..hardware import heap_kept
from ..mlm_head import embedding_gradient_in_place
from ..onednn import onednn_training
from .dropout import cpu_dropout, has_dropout


@contextmanager
def cpu_training(
    model, device: torch.device, processes: int, compiled: bool = False, recomputed: bool = False
) -> Iterator[None]:
    """Within the block, `model` trains with what suits a CPU: the heap kept whenever `device` is one;
    in a lone process whose model is not compiled, the embedding's gradient rows in place (DDP, FSDP
    and DeepSpeed reduce or shard a gradient as soon as autograd has made it, before the rows would be
    added; a compiled graph makes its own), and, unless activations are `recomputed` in the backward
    pass, which runs outside the block, the linear layers' forward by oneDNN and, for a model with
    dropout, the cheaper dropout (the recomputation would draw PyTorch's masks, not the forward's)."""
    on_cpu = device.type == "cpu"
    lone = on_cpu and processes == 1 and not compiled
    with (
        heap_kept(on_cpu),
        embedding_gradient_in_place(model, enabled=lone),
        cpu_dropout(lone and not recomputed and has_dropout(model)),
        onednn_training(model, enabled=lone and not recomputed),
    ):
        yield
