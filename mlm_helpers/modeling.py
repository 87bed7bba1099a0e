"""Getting a masked-LM model and its tokenizer from the Hub or a local folder, with clear errors, and the
checks a model must pass before training. Models built from scratch are in scratch.py.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel

from .config import ConfigError
from .families import FAMILIES, MLM_ARCHITECTURES, family_of, position_limit
from .hub import hub_reachable, require_hub


class ModelLoadError(ConfigError):
    """A model folder or id that cannot be loaded as a masked-LM model."""


def load_model(name_or_path: str | Path, max_length: int | None = None) -> tuple[PreTrainedModel, object]:
    """Load a masked-LM model and its tokenizer from a local folder or a Hub id, with clear errors.

    With `max_length`, the model's position limit is checked from its config, before the weights load.

    >>> model, tokenizer = load_model("bert_finetuned")
    """
    name_or_path = str(name_or_path)
    local_only = _resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only)
        check_mlm_head(config, name_or_path)
        if max_length is not None:
            check_max_length(config, max_length)
        tokenizer = load_tokenizer(name_or_path, local_only)  # before the weights: without it they are no use
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForMaskedLM.from_pretrained(name_or_path, local_files_only=local_only)
    except ConfigError:
        raise
    except pickle.UnpicklingError:
        # transformers loads .bin weights with torch.load(weights_only=True): a pickle that would run
        # code is stopped before it runs. We never retry without that protection.
        raise ModelLoadError(
            f"Refusing to load {name_or_path}: its weights file holds more than tensors and could run code "
            "when loaded. Use a model saved as safetensors, or one you trust re-saved with save_pretrained."
        ) from None
    except ValueError as error:
        raise ModelLoadError(
            f"{name_or_path} is not a masked-language model: use a model with an MLM head, such as "
            f"{FAMILIES['bert'].example}. ({error})"
        ) from None
    except OSError as error:
        raise ModelLoadError(f"Cannot load the model {name_or_path!r}: {error}") from None
    except SafetensorError as error:  # a truncated or corrupted weights file
        weights = Path(name_or_path) / "model.safetensors"
        where = weights if weights.is_file() else f"the weights of {name_or_path}"
        raise ModelLoadError(
            f"{where} is damaged or incomplete ({error}): save or copy the model again."
        ) from None
    return model, tokenizer


def load_tokenizer(name_or_path: str, local_only: bool):
    """The model's tokenizer, fast where transformers can build one: from tokenizer.json, or from an
    older layout's vocab.txt (WordPiece) or vocab.json and merges.txt (BPE), which need nothing more.
    Only a SentencePiece model file without tokenizer.json needs the `sentencepiece` package."""
    folder = Path(name_or_path)
    if folder.is_dir():
        check_tokenizer_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_only)
    except (ValueError, ImportError) as error:
        models = [name for name in SENTENCEPIECE_FILES if (folder / name).is_file()]
        if not models:
            raise ModelLoadError(f"Cannot load the tokenizer of {name_or_path}: {error}") from None
        raise ModelLoadError(
            f"The tokenizer of {name_or_path} is saved as a SentencePiece model ({models[0]}) without "
            "tokenizer.json: `pip install sentencepiece` to read it, or save the tokenizer where it loads "
            f"(tokenizer.save_pretrained writes tokenizer.json). transformers says: {error}"
        ) from None
    if tokenizer.mask_token_id is None:
        raise ModelLoadError(
            f"The tokenizer of {name_or_path} has no mask token: masked-LM training needs one."
        )
    return tokenizer


# The files a saved tokenizer may consist of: fast (tokenizer.json), WordPiece, byte-level BPE,
# SentencePiece. Without any of them transformers builds a 5-token tokenizer and every answer is noise.
SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", *SENTENCEPIECE_FILES)


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a model folder saved without its tokenizer."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} holds no tokenizer (looked for {', '.join(TOKENIZER_FILES)}): save it beside the "
            f"model with tokenizer.save_pretrained({str(folder)!r}), or use a folder that has one."
        )


def model_source(name_or_path: str) -> str:
    """How a model that is not on this disk is named in a message: as a Hub id, noting that no folder
    of that name exists (a mistyped path reads as a Hub id too)."""
    return f"the model {name_or_path!r} (there is no folder of that name in {Path.cwd()}, so it is a Hub id)"


def _resolve(name_or_path: str) -> bool:
    """Check that the model can be had; True when it must come from local files only."""
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name_or_path} is a folder but holds no config.json: point --model at a folder "
                "written by save_pretrained (such as bert_finetuned/), or at a Hub id."
            )
        return True
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"Model folder not found: {name_or_path}. Check the path.")
    if hub_reachable():
        return False
    try:  # offline, a model already in the Hugging Face cache still loads
        AutoConfig.from_pretrained(name_or_path, local_files_only=True)
        return True
    except OSError:
        require_hub(model_source(name_or_path))
    return True


def check_mlm_head(config, name: str) -> None:
    """Refuse a checkpoint saved without a trained MLM head (a classifier, an ELECTRA discriminator),
    whose head would start from random weights."""
    family = family_of(config)
    accepted, example = (
        (family.mlm_architectures, family.example) if family else (MLM_ARCHITECTURES, "bert-base-uncased")
    )
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith(accepted) for a in architectures):
        raise ModelLoadError(
            f"{name} is a {architectures[0]}, not a masked-language model: its MLM head would start from "
            f"random weights. Use a model trained with one, such as {example}."
        )


def check_max_length(config, max_length: int) -> None:
    """Fail early when examples would be longer than the model's positions allow."""
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise ConfigError(f"--max-length {max_length} is above this model's limit of {limit} tokens.")


def check_trainable(model: PreTrainedModel, gradient_checkpointing: bool) -> None:
    """Refuse settings the model cannot train with, before the first step."""
    if gradient_checkpointing and not model.supports_gradient_checkpointing:
        raise ConfigError(
            f"{type(model).__name__} does not support --gradient-checkpointing: leave it off, and save "
            "memory with a smaller --batch-size and more --gradient-accumulation-steps, or a smaller "
            "--max-length."
        )


def family_note(config) -> str | None:
    """One line for a model of a family the registry does not know (it trains, with its full head)."""
    if family_of(config) is not None:
        return None
    return (
        f"Note: {config.model_type!r} is not a family this package knows ({', '.join(FAMILIES)}): it trains "
        "with its full vocabulary head (slower), and its FLOPs and MFU are not reported."
    )


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (non-reentrant
    checkpointing, which keeps dropout's random draws the same in the recomputation)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
