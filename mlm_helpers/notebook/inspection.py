"""Looking at the inputs of a run: the machine, what tokenization and packing make of the text, what
masking does to each token, and the command line that repeats a notebook's run.

Pure functions over the package's own pipeline (nothing here re-implements packing or masking); the
tables are pandas DataFrames, which Jupyter shows as HTML and plain Python prints as text.
"""

from __future__ import annotations

import dataclasses
import platform
import shlex
from collections.abc import Iterable, Sequence
from importlib import metadata

import pandas as pd
import torch

from ..config import ConfigError, TrainConfig, make_config
from ..data.examples import cut_examples, tokenize_texts
from ..data.masking import IGNORE_INDEX, MaskingRule, Vocabulary, mask_text

MASKED, RANDOM, KEPT, UNSELECTED = "[MASK]", "random", "kept", "unselected"
LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "tokenizers")


def environment_table() -> pd.DataFrame:
    """The device a run will use (as Accelerate picks it: CUDA, then MPS, then CPU) and library versions."""
    from accelerate import PartialState

    device = PartialState().device
    if device.type == "cuda":
        name = f"CUDA: {torch.cuda.get_device_name(device)}"
    elif device.type == "mps":
        name = "MPS (Apple silicon)"
    else:
        name = f"CPU, {torch.get_num_threads()} threads (no GPU found)"
    rows = {"device": name, "python": platform.python_version()}
    rows.update({library: metadata.version(library) for library in LIBRARIES})
    return pd.DataFrame({"value": rows}).rename_axis("")


def outcome_masks(
    input_ids: torch.Tensor, labels: torch.Tensor, mask_token_id: int
) -> dict[str, torch.Tensor]:
    """Boolean masks, one per outcome, of what masking did to each token, read from ``(input_ids,
    labels)`` as `mask_text` and `MaskedLanguageModelingDataset` return them (any shape).

    MASKED: shown as [MASK]; RANDOM: shown as another token; KEPT: selected but shown as it was;
    UNSELECTED: not predicted. A random replacement that happens to draw the original token counts as
    KEPT: to the model it is the same input.
    """
    selected = labels != IGNORE_INDEX
    masked = selected & (input_ids == mask_token_id)
    kept = selected & (input_ids == labels)
    return {MASKED: masked, RANDOM: selected & ~masked & ~kept, KEPT: kept, UNSELECTED: ~selected}


def token_outcomes(input_ids: torch.Tensor, labels: torch.Tensor, mask_token_id: int) -> list[str]:
    """The outcome of each token of one example (see `outcome_masks`), in order."""
    masks = outcome_masks(input_ids, labels, mask_token_id)
    return [next(name for name, mask in masks.items() if mask[i]) for i in range(len(input_ids))]


def masking_table(
    text: str, tokenizer, mlm_probability: float = 0.15, seeds: Iterable[int] = range(8)
) -> pd.DataFrame:
    """`text` masked by `mask_text` once per seed: one row per token, one column per seed.

    A cell is empty where the token was not selected, "[MASK]", "random: <token>" with the token the
    model reads instead, or "kept" where the model reads the original but must still predict it.
    """
    original = tokenizer(text, truncation=True)["input_ids"]
    columns = {}
    for seed in seeds:
        ids, labels = mask_text(text, tokenizer, mlm_probability=mlm_probability, seed=seed)
        cells = []
        for outcome, shown in zip(token_outcomes(ids, labels, tokenizer.mask_token_id), ids.tolist()):
            if outcome == RANDOM:
                cells.append(f"random: {tokenizer.convert_ids_to_tokens(shown)}")
            else:
                cells.append("" if outcome == UNSELECTED else outcome)
        columns[f"seed {seed}"] = cells
    return pd.DataFrame(columns, index=pd.Index(tokenizer.convert_ids_to_tokens(original), name="token"))


def masking_summary(batch: dict[str, torch.Tensor], tokenizer, rule: MaskingRule) -> pd.DataFrame:
    """How often each outcome happened in a batch, next to what `rule` expects.

    Selection is counted against the tokens that may be selected (special and padding tokens never
    are); the three outcomes against the selected tokens.
    """
    ids, labels = batch["input_ids"], batch["labels"]
    outcomes = {
        name: int(mask.sum()) for name, mask in outcome_masks(ids, labels, tokenizer.mask_token_id).items()
    }
    originals = torch.where(labels != IGNORE_INDEX, labels, ids)
    eligible = ~Vocabulary.from_tokenizer(tokenizer).special[originals]
    eligible &= batch.get("attention_mask", torch.ones_like(ids)).bool()
    selected = outcomes[MASKED] + outcomes[RANDOM] + outcomes[KEPT]
    kept_share = 1.0 - rule.mask_replace_prob - rule.random_replace_prob
    rows = {
        "selected for prediction": (selected, int(eligible.sum()), rule.mlm_probability),
        f"selected, shown as {MASKED}": (outcomes[MASKED], selected, rule.mask_replace_prob),
        "selected, shown as a random token": (outcomes[RANDOM], selected, rule.random_replace_prob),
        "selected, kept as it was": (outcomes[KEPT], selected, kept_share),
    }
    return pd.DataFrame(
        {
            "tokens": [count for count, _, _ in rows.values()],
            "out of": [total for _, total, _ in rows.values()],
            "observed (%)": [round(100 * count / max(total, 1), 1) for count, total, _ in rows.values()],
            "rule (%)": [round(100 * share, 1) for _, _, share in rows.values()],
        },
        index=pd.Index(list(rows), name="outcome"),
    )


def tokenization_table(texts: Sequence[str], tokenizer) -> pd.DataFrame:
    """Each text next to its word pieces and their count (without [CLS] and [SEP])."""
    pieces = [tokenizer.tokenize(text) for text in texts]
    return pd.DataFrame(
        {
            "text": list(texts),
            "word pieces": [" ".join(p) for p in pieces],
            "tokens": [len(p) for p in pieces],
        }
    )


def padding_vs_packing(texts: Sequence[str], tokenizer, max_length: int, batch_size: int) -> pd.DataFrame:
    """What three ways of batching the same texts cost, counted on the package's own examples.

    - "pad every row to max_length": one example per row, padded to `max_length` (the original project).
    - "pad each batch to its longest row": ``--packing sentence``.
    - "pack into full blocks": ``--packing packed``; no padding, the tail that fills no block is dropped.

    "token slots" is what the model computes over; "text tokens" the word pieces of the text in them;
    "text lost" those cut off by truncation or dropped with the tail.
    """
    token_lists = list(tokenize_texts(texts, tokenizer))
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    rows = list(cut_examples(token_lists, max_length, "sentence", cls_id, sep_id))
    blocks = list(cut_examples(token_lists, max_length, "packed", cls_id, sep_id))
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    per_batch_slots = sum(len(batch) * max(len(r) for r in batch) for batch in batches)
    text_total = sum(len(t) for t in token_lists)
    strategies = {
        "pad every row to max_length": (rows, len(rows) * max_length),
        "pad each batch to its longest row": (rows, per_batch_slots),
        "pack into full blocks": (blocks, len(blocks) * max_length),
    }
    table = {}
    for name, (examples, slots) in strategies.items():
        text_tokens = sum(len(e) - 2 for e in examples)
        table[name] = {
            "examples": len(examples),
            "token slots": slots,
            "text tokens": text_tokens,
            "padding (%)": round(100 * (slots - sum(len(e) for e in examples)) / max(slots, 1), 1),
            "text lost (%)": round(100 * (text_total - text_tokens) / max(text_total, 1), 1),
        }
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("batching")


def cli_command(cfg: TrainConfig, preset_name: str | None = None) -> str:
    """The ``python -m mlm_helpers train`` command that builds the same config as `cfg`.

    Only settings that differ from the preset (or from the defaults) become flags.

    >>> cli_command(make_config("quick", max_steps=50), "quick")
    'python -m mlm_helpers train --preset quick --max-steps 50'
    """
    base = make_config(preset_name)
    words = ["python", "-m", "mlm_helpers", "train"]
    if preset_name:
        words += ["--preset", preset_name]
    for field in dataclasses.fields(TrainConfig):
        value, default = getattr(cfg, field.name), getattr(base, field.name)
        if value == default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        elif value is None:
            raise ConfigError(f"{field.name}=None cannot be written as a flag: leave it at its default.")
        else:
            words += [flag, str(value)]
    return shlex.join(words)
