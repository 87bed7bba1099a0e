"""The masked-positions-only MLM head: the vocabulary projection where there are labels, nowhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # importing transformers' models imports accelerate: only when a model is loaded
    from transformers import PreTrainedModel


class SparseMaskedLM(torch.nn.Module):
    """Wraps a masked-LM model so the vocabulary projection runs only at the selected positions.

    The head is applied to the hidden states of the ~15% of tokens that carry a label, instead of all
    of them: the loss is the same (the other positions have no label), at a fraction of the head's
    cost, as in NVIDIA's and MosaicML's BERT recipes. Models whose head cannot be found this way fall
    back to the full head. The wrapped model is unchanged and saves as a plain masked-LM model.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    @property
    def head(self) -> torch.nn.Module | None:
        # BERT-family heads accept hidden states of any shape. A property, not a second registration
        # of the head, so that the wrapper's parameter names are the model's, each given once.
        return getattr(self.model, "cls", None)

    @property
    def _no_split_modules(self) -> list[str]:
        # The classes whose modules Accelerate's FSDP shards one by one when its config names none:
        # the encoder's layers (BertLayer, RobertaLayer). Not the model's own list, which names the
        # embeddings too: their weight is the output projection's, and FSDP refuses to split a tied
        # weight between two shard units.
        layers = getattr(getattr(self.model.base_model, "encoder", None), "layer", None)
        return sorted({type(layer).__name__ for layer in layers or []})

    def masked_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at the labelled positions, shape [n, vocab], and their target ids, shape [n]."""
        selected = labels != -100
        if self.head is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[selected]
        else:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
            logits = self.head(hidden[selected])
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
