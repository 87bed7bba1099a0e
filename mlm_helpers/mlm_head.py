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
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
            logits = head(hidden[selected])
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
def sparse_embedding_gradient(model: PreTrainedModel, enabled: bool = True) -> Iterator[bool]:
    """Within the block, the input embedding's backward pass gives the rows of the tokens it saw (a
    sparse gradient) instead of a dense matrix of the vocabulary's size, when its weight is the output
    projection's: the projection's dense gradient is then the sum both are added into, the same sum
    as before, without making a zero matrix the size of the vocabulary's and adding all of it on every
    backward pass (bert-base in fp32 on 2 CPU cores: 3.03-3.09 s a step, 3.16-3.18 dense). Off for a
    weight of its own, whose gradient would stay sparse, which AdamW refuses. Yields whether it is on."""
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    on = (
        enabled
        and isinstance(embedding, torch.nn.Embedding)
        and not embedding.sparse
        and getattr(output, "weight", None) is embedding.weight
    )
    if on:
        embedding.sparse = True
    try:
        yield on
    finally:
        if on:
            embedding.sparse = False
