"""Where the network runs for prediction: PyTorch here, ONNX Runtime in onnx_backend.py, one interface.

A backend takes a padded batch and the flat positions of its mask tokens, and returns the logits at
those positions only. The vocabulary projection (30,522 x 768 for BERT-base, a fifth of the network's
work on a short sentence) then runs once per mask instead of once per token. Both backends feed the
model input_ids and attention_mask only, which every family's forward takes: token_type_ids would be
all zeros for one text, which is BERT's own default, DistilBERT and ModernBERT take none, and
RoBERTa's tokenizer gives none.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch

from ..families import position_limit
from ..hardware import bf16_supported
from ..mlm_head import SparseMaskedLM
from ..onednn import ONEDNN_FROM, linear, onednn_works
from .inputs import PredictionError


class Backend(Protocol):
    """What `Predictor` needs from a model: its sizes, and logits at the mask positions of a batch."""

    device: torch.device
    vocab_size: int  # width of the logits
    max_length: int  # most tokens one input may hold (roberta-base: 512, its 514 positions less 2)

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Float logits [len(positions), vocab_size] at `positions`, indices into the flattened batch."""
        ...


class MaskedLogits(torch.nn.Module):
    """A masked-LM's logits at given positions of a batch: what both backends run (and ONNX exports)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = SparseMaskedLM(model).head  # the head training applies at the masked positions too

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        if self.head is None:  # a model whose head we cannot find: the full projection, then pick
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return logits.flatten(0, 1).index_select(0, positions)
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
        return self.head(hidden.flatten(0, 1).index_select(0, positions))


class TorchBackend:
    """A PyTorch masked-LM in eval mode on one device, optionally computing in bfloat16.

    bf16 runs under `torch.autocast`, which keeps softmax and LayerNorm in float32 and leaves the
    weights as they are, so a model passed in by the caller is not changed. Float32 on a CPU runs the
    model's Linear layers through oneDNN (`onednn_linears`), on the same weights.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None, bf16: bool = False):
        self.device = usable_device(device) if device is not None else next(model.parameters()).device
        if bf16 and not bf16_supported(self.device):
            raise PredictionError(
                f"bf16 needs a GPU with bfloat16 or a CPU with AVX512-BF16 or AMX; {self.device} has "
                "neither, where it would be slower than float32: leave bf16 off."
            )
        model = model.to(self.device).eval()
        if self.device.type == "cpu" and not bf16 and onednn_works():
            model = onednn_linears(model)
        self.module = MaskedLogits(model)
        self.bf16 = bf16
        self.vocab_size = model.config.vocab_size
        self.max_length = position_limit(model.config) or 10**9

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        to = self.device
        with (
            torch.inference_mode(),
            torch.autocast(to.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            logits = self.module(input_ids.to(to), attention_mask.to(to), positions.to(to))
        return logits.float()

    def weights_version(self) -> int:
        """A count that grows whenever a weight changes in place (an optimizer step, load_state_dict)."""
        try:
            return sum(parameter._version for parameter in self.module.parameters())
        except RuntimeError:  # weights made under inference_mode keep no count, and cannot change
            return -1


class OneDnnLinear(torch.nn.Module):
    """A `Linear` computed by oneDNN's inner product: the same weights, read where the layer keeps them.

    For the few rows of a sentence or two, a CPU matmul is bound by reading the weights, and oneDNN's
    inner product reads them faster than the matmul `Linear` calls: 1.6x for bert-base's layers at 12
    rows, measured on our CPUs (docs/benchmarks.md). The weight is the layer's own tensor, so training
    the model further changes what this computes, as it would the layer's.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or self.weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return torch.nn.functional.linear(x, self.weight, self.bias)  # oneDNN's op here is float32
        return linear(x, self.weight, self.bias)


def onednn_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A twin of `module` with each large `Linear` run by `OneDnnLinear`; the caller's module is unchanged.

    Every other module is a shallow copy that shares its parameters and buffers, so the twin costs no
    memory and always computes with the model's current weights.
    """
    if type(module) is torch.nn.Linear:
        return OneDnnLinear(module) if module.weight.numel() >= ONEDNN_FROM else module
    twin = copy.copy(module)
    twin._parameters, twin._buffers = dict(module._parameters), dict(module._buffers)
    twin._modules = {
        name: None if child is None else onednn_linears(child) for name, child in module._modules.items()
    }
    return twin


def padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` of ids as one batch: input_ids padded with `pad_id` to the longest row, attention_mask."""
    width = max(map(len, rows))
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, attention


def usable_device(spec: str | torch.device) -> torch.device:
    """`spec` as a device this machine has, or a PredictionError naming the ones it has."""
    try:
        device = torch.device(spec)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError):  # torch's own words for a device it lacks
        have = ", ".join(
            ["cpu"] + ["cuda"] * torch.cuda.is_available() + ["mps"] * torch.backends.mps.is_available()
        )
        raise PredictionError(f"No device {spec!r} here: use one of {have}.") from None
    return device
