"""The masked-positions-only MLM head: the vocabulary projection where there are labels, nowhere else."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from .families import encoder_layers, family_of

if TYPE_CHECKING:  # importing transformers' models imports accelerate: only when a model is loaded
    from transformers import PreTrainedModel


class SparseMaskedLM(torch.nn.Module):
    """Wraps a masked-LM model so the vocabulary projection runs only at the selected positions.

    The head is applied to the hidden states of the ~15% of tokens that carry a label, instead of all
    of them: the loss is the same (the other positions have no label), at a fraction of the head's
    cost, as in NVIDIA's and MosaicML's BERT recipes. The family registry (`families.py`) says where each
    family's head is; a model of a family it does not know runs its full head (`sparse` says which).
    The wrapped model is unchanged and saves as a plain masked-LM model.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    @property
    def head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Hidden states (of any leading shape) -> logits, through the model's own head modules; None
        for a family the registry does not know. Looked up on each call rather than registered again,
        so that the wrapper's parameter names are the model's, each given once."""
        family = family_of(self.model.config)
        return functools.partial(family.head, self.model) if family else None

    @property
    def sparse(self) -> bool:
        """Whether the vocabulary projection runs at the labelled positions only."""
        return family_of(self.model.config) is not None

    @property
    def _no_split_modules(self) -> list[str]:
        # The classes whose modules Accelerate's FSDP shards one by one when its config names none:
        # the encoder's layers (BertLayer, RobertaLayer). Not the model's own list, which names the
        # embeddings too: their weight is the output projection's, and FSDP refuses to split a tied
        # weight between two shard units.
        return sorted({type(layer).__name__ for layer in encoder_layers(self.model)})

    def masked_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at the labelled positions, shape [n, vocab], and their target ids, shape [n]."""
        selected = labels != -100
        head = self.head
        if head is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[selected]
        else:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0][selected]
            if hidden.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
                # In fp32: at the few masked positions the head's products cost less than casting its
                # weights to bf16 and its gradients back, the vocabulary's matrix (23 million numbers
                # for bert-base) the largest, each step.
                with torch.autocast("cpu", enabled=False):
                    logits = head(hidden.float())
            else:
                logits = head(hidden)
        return logits, labels[selected]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        num_targets: int | None = None,
    ) -> torch.Tensor:
        """Cross-entropy summed over the labelled tokens, divided by `num_targets` (default: their count).

        Passing the number of labelled tokens in a whole accumulation window makes accumulated
        gradients equal those of one big batch, however unevenly the masks fall between micro-batches.
        """
        logits, targets = self.masked_logits(input_ids, attention_mask, labels)
        total = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        return total / max(num_targets if num_targets is not None else targets.numel(), 1)


@contextlib.contextmanager
def embedding_gradient_in_place(model: PreTrainedModel, enabled: bool = True) -> Iterator[bool]:
    """Within the block, the input embedding's backward pass adds the gradient rows of the tokens it
    saw into the weight's gradient in place, when its weight is the output projection's, instead of
    autograd's way: a dense matrix of the vocabulary's size, zero but for those rows, added to the
    projection's gradient into a third such matrix on every backward pass. The sum is the same. Off
    for a weight of its own. Yields whether it is on."""
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    on = (
        enabled
        and type(embedding) is torch.nn.Embedding
        and embedding.max_norm is None
        and getattr(output, "weight", None) is embedding.weight
    )
    handle = embedding.register_forward_hook(_rows_added_in_place) if on else None
    try:
        yield on
    finally:
        if handle is not None:
            handle.remove()


def _rows_added_in_place(
    embedding: torch.nn.Embedding, inputs: tuple, looked_up: torch.Tensor
) -> torch.Tensor:
    """The embedding's output again, from its weight detached, as a leaf of its own: the gradient
    reaching it is added to the rows of the weight's gradient by `index_add_` (skipping the padding
    id's, as the embedding's own backward does). The output projection's gradient, the weight's only
    other one, so becomes the weight's gradient first, without a copy: autograd hands it over as soon
    as the head's backward has made it, and this hook runs at the very end of the backward pass."""
    weight, ids = embedding.weight, inputs[0]
    if not torch.is_grad_enabled() or not weight.requires_grad:
        return looked_up
    out = torch.nn.functional.embedding(ids, weight.detach(), embedding.padding_idx)
    out.requires_grad_(True)

    def add_rows(grad: torch.Tensor) -> None:
        rows, seen = grad.reshape(-1, grad.shape[-1]), ids.reshape(-1)
        if embedding.padding_idx is not None:
            real = seen != embedding.padding_idx
            rows, seen = rows[real], seen[real]
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, seen, rows.to(weight.grad.dtype))

    out.register_hook(add_rows)
    return out
