"""Dropout on a CPU from a third of PyTorch's random draws.

PyTorch's CPU dropout draws one 64-bit number per element from its Mersenne Twister, one after another
in a serial loop: for bert-base at batch 8 x 128 that is 38.5 million draws a step, 7% of an fp32 step
on a 2-core AMD EPYC and a quarter of a bf16 step on a Xeon with AMX, the second core idle meanwhile.
Here each 63-bit draw of the same generator gives three 21-bit numbers, so three elements' keep-or-drop
decisions: a third of the serial work, the rest vectorised. An element is kept when its number is below
round((1 - p) * 2**21) and kept values are scaled by 2**21 over that bound, so every output's
expectation is its input's exactly, as with PyTorch's; p itself is rounded to a multiple of 2**-21
(0.1 becomes 0.09999990). The masks are other masks than PyTorch's, from the same seeded generator,
so a run repeats with its seed and a resumed one continues it bit for bit.

`cpu_dropout()` puts it under every `torch.nn.functional.dropout` (which `nn.Dropout` calls) and under
the dropout of `scaled_dot_product_attention`, whose CPU kernels draw their masks the same serial way;
with dropout, its math is the unfused path PyTorch takes on a CPU anyway. Any model family is covered,
whichever way it calls them. Tensors on other devices, and calls without dropout, go to PyTorch as they
were.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

BITS = 21  # a 63-bit draw holds three
UNIT = 1 << BITS
LOW = UNIT - 1


def keep_mask(
    shape: torch.Size, p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """A bool mask of `shape` keeping each element with probability 1 - p (rounded to a multiple of
    2**-21), and the scale that makes kept values' expectation the input's."""
    bound = round((1.0 - p) * UNIT)
    count = math.prod(shape)
    if bound == UNIT:  # p rounds to 0
        return torch.ones(shape, dtype=torch.bool), 1.0
    draws = torch.empty(-(-count // 3), dtype=torch.int64).random_(generator=generator)  # 63 bits each
    keep = torch.empty(3, draws.numel(), dtype=torch.bool)
    # The three numbers are bits 0-20, 21-41 and 42-62; comparing the low bits whole, without shifts,
    # takes two passes over the draws fewer.
    torch.lt(draws & LOW, bound, out=keep[0])
    torch.lt(draws & ((1 << 2 * BITS) - 1), bound << BITS, out=keep[1])
    torch.lt(draws, bound << 2 * BITS, out=keep[2])
    return keep.view(-1)[:count].view(shape), UNIT / bound if bound else 0.0


def dropout(input: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """`F.dropout(input, p, training=True, inplace)` with masks from `keep_mask`. What autograd keeps
    for the backward pass is the bool mask, a byte an element, as with PyTorch's dropout: multiplying by
    the mask first and the scale after, not by a float factor of both, which it would keep instead."""
    keep, scale = keep_mask(input.shape, p)
    return (input.mul_(keep) if inplace else input * keep).mul_(scale)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` computed as its unfused math, the probabilities dropped out
    with `dropout`. As PyTorch's math on a CPU, it computes in fp32 for bf16 and fp16 inputs and gives
    zeros for a row whose keys are all masked out."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    query, key, value = (part.to(dtype).float() for part in (query, key, value))  # as autocast rounds them
    if enable_gqa and key.size(-3) != query.size(-3):
        repeat = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    if is_causal:
        attn_mask = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    with torch.autocast("cpu", enabled=False):
        scores = (query * scale) @ key.transpose(-2, -1)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        elif attn_mask is not None:
            scores = scores + attn_mask.float()
        probs = scores.softmax(-1)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            blind = ~attn_mask.any(-1, keepdim=True)  # rows with every key masked out: NaN, made 0
            if blind.any():
                probs = probs.masked_fill(blind, 0.0)
        if dropout_p > 0.0:
            probs = dropout(probs, dropout_p)
        return (probs @ value).to(dtype)


def _dropout_args(input, p=0.5, training=True, inplace=False):
    return input, p, training, inplace


def _attention_args(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


class _CpuDropout(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            input, p, training, inplace = _dropout_args(*args, **kwargs)
            if training and 0.0 < p < 1.0 and input.device.type == "cpu":
                return dropout(input, p, inplace)
        elif func is F.scaled_dot_product_attention:
            parts = _attention_args(*args, **kwargs)
            if parts[4] > 0.0 and parts[0].device.type == "cpu":
                return attention(*parts)
        return func(*args, **kwargs)


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether any of the model's dropout draws masks: every family keeps its rates, the attention
    probabilities' too, on `nn.Dropout` modules (ModernBERT swaps in `nn.Identity` at a rate of 0)."""
    return any(isinstance(module, torch.nn.Dropout) and module.p > 0 for module in model.modules())


@contextmanager
def cpu_dropout(enabled: bool = True) -> Iterator[bool]:
    """Within the block, dropout on CPU tensors draws its masks with `keep_mask`. Yields whether it is on."""
    if not enabled:
        yield False
        return
    with _CpuDropout():
        yield True
