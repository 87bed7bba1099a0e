"""oneDNN's inner product for float32 linear layers on a CPU, where it runs faster than the matmul that
`torch.nn.functional.linear` calls: whether this torch has it, and the layer's forward computed by it,
for prediction (`predict/torch_backend.py`) and for training, with autograd's backward.

In training the products are the matmul's with other rounding (oneDNN's own order of summation): the
same function, the same gradients' formulas; a run still repeats itself bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# The smallest layer (weights) that runs on oneDNN's inner product. Prediction, at 12 rows on our 2-core
# CPUs: 0.4x to 0.9x the matmul's speed for 128x128 to 256x1024 layers, whose weights sit in the
# caches, and 1.3x to 1.8x from 768x768 up, where reading them from memory dominates. Training, whole
# steps taking turns (docs/benchmarks.md): bert-base's layers 2.5% faster in all, the quick model's
# (128x128 to 128x3000) 6% slower, its products too small to repay the Python around each.
ONEDNN_FROM = 2**19


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` by oneDNN's inner product, float32 on a CPU; no autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.cache
def onednn_works() -> bool:
    """Whether this torch has oneDNN's inner product and it agrees with `Linear` (x86 and Arm builds)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    generator = torch.Generator().manual_seed(0)  # torch's own random state stays as it is
    weight, bias = torch.randn(8, 16, generator=generator), torch.randn(8, generator=generator)
    x = torch.randn(2, 3, 16, generator=generator)
    try:
        with torch.inference_mode():
            return torch.allclose(linear(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-6)
    except RuntimeError:  # an op this build declares but cannot run
        return False


class _Linear(torch.autograd.Function):
    """The forward product by oneDNN; the backward ones as autograd computes a Linear's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, weight)
        ctx.shape, ctx.has_bias = x.shape, bias is not None
        return linear(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        x_grad = grad.mm(weight).view(ctx.shape) if ctx.needs_input_grad[0] else None
        weight_grad = grad.t().mm(rows) if ctx.needs_input_grad[1] else None
        bias_grad = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return x_grad, weight_grad, bias_grad


def trainable_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` with its forward product by oneDNN and autograd's backward: float32
    tensors on a CPU (plain ones, not subclasses such as FSDP's DTensor)."""
    return _Linear.apply(x.contiguous(), weight, bias)


def _fits(x, weight, bias) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        not torch.is_autocast_enabled("cpu")  # autocast casts the layer to bf16 itself
        and all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and x.dim() >= 1
        and weight.dim() == 2
        and x.shape[-1] == weight.shape[1]
        and weight.numel() >= ONEDNN_FROM
    )


def _linear_args(input, weight, bias=None):
    return input, weight, bias


class _OneDnnLinears(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = _linear_args(*args, **kwargs)
            if _fits(x, weight, bias):
                return trainable_linear(x, weight, bias)
        return func(*args, **kwargs)


@contextmanager
def onednn_training(model: torch.nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block, every float32 `F.linear` on the CPU of `ONEDNN_FROM` weights or more (`nn.Linear`
    calls it: every family's layers and heads) runs as `trainable_linear`, when `enabled`, this torch
    has oneDNN's inner product and `model` has such a layer (elsewhere the block would only add its
    cost to every torch call). Others, and layers under CPU autocast, go to PyTorch as they were.
    Yields whether it is on."""
    large = any(
        isinstance(module, torch.nn.Linear) and module.weight.numel() >= ONEDNN_FROM
        for module in model.modules()
    )
    if not (enabled and large and onednn_works()):
        yield False
        return
    with _OneDnnLinears():
        yield True
