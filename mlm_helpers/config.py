"""The one place where defaults live.

`TrainConfig` holds every setting of a run. The command line builds its flags from the fields below
(each field's ``help`` becomes the flag's help) and the notebook builds the same object, so no default
is typed twice. A config is validated when it is built: a bad value fails here, before any download.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

# A model id of this form builds a small BERT from a config, with a WordPiece vocabulary trained on the
# run's own text, so a run needs no hub at all. Hub ids never contain ":", so it cannot clash with one.
SCRATCH_PREFIX = "scratch:"

# The BookCorpus copy that still loads on datasets 4+: the original "bookcorpus/bookcorpus" is a
# loading-script dataset, which datasets 4 refuses. This revision is the Hub's parquet export of it
# (several shards, so DataLoader workers and ranks can split it); "main" is a single Arrow file.
BOOKCORPUS = "SamuelYang/bookcorpus"
BOOKCORPUS_REVISIONS = ("refs/convert/parquet", "main")


DEFAULT_MAX_STEPS = 1000


class ConfigError(ValueError):
    """A setting or an input is unusable; the message says which and what to do instead."""


def sample_corpus_files() -> list[str]:
    """Paths of the original sample text shipped with the package (one sentence per line)."""
    folder = resources.files("mlm_helpers") / "sample_corpus"
    return sorted(str(p) for p in Path(str(folder)).glob("*.txt"))


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """Every setting of a fine-tuning run. Defaults follow the original project where it did not waste
    compute: bert-base-uncased on BookCorpus, batch 8, learning rate 5e-5, 512 tokens, 15% masking."""

    # What to train.
    model: str = field(
        default="bert-base-uncased",
        metadata=_help(
            "Hub id or local directory of a masked-LM model, or 'scratch:tiny' / 'scratch:mini' (a small "
            "BERT with WordPiece) or 'scratch:roberta-tiny' (a small RoBERTa with byte-level BPE), built "
            "from a config with a vocabulary trained on the data (no download)."
        ),
    )
    # Where the text comes from.
    dataset: str = field(
        default=BOOKCORPUS, metadata=_help("Hub dataset id, used when --data-files is not given.")
    )
    dataset_config: str | None = field(
        default=None, metadata=_help("Hub dataset configuration name (e.g. wikitext-2-raw-v1).")
    )
    dataset_revision: str | None = field(
        default=None,
        metadata=_help(
            "Hub dataset revision. Default: for BookCorpus, its parquet export then 'main'; "
            "otherwise the dataset's default branch."
        ),
    )
    split: str = field(default="train", metadata=_help("Dataset split to read."))
    text_column: str = field(default="text", metadata=_help("Column that holds the text."))
    data_files: list[str] | None = field(
        default=None,
        metadata=_help(
            "Local .txt, .jsonl, .json, .csv or .parquet files to train on instead of --dataset; a folder "
            "stands for its files, a quoted pattern ('books/*.txt') for the files it matches.",
            nargs="+",
        ),
    )
    txt_unit: Literal["line", "paragraph"] = field(
        default="line",
        metadata=_help("For .txt files: one example per line, or per blank-line-separated paragraph."),
    )
    # Words added to the vocabulary before training (new_words.py).
    add_tokens: str | None = field(
        default=None,
        metadata=_help(
            "A file of words, one per line, to add to the tokenizer as whole words; their embeddings "
            "start as the mean of the pieces each replaces."
        ),
    )
    add_frequent_words: int = field(
        default=0,
        metadata=_help(
            "Add the N most frequent words of the training text that the tokenizer splits into 3 or "
            "more pieces (printed with their piece counts before training)."
        ),
    )
    # How text becomes examples.
    packing: Literal["packed", "sentence"] = field(
        default="packed",
        metadata=_help(
            "'packed' joins the text and cuts it into full blocks of --max-length tokens (no padding); "
            "'sentence' keeps one example per row, padded per batch."
        ),
    )
    max_length: int = field(default=512, metadata=_help("Tokens per example, [CLS] and [SEP] included."))
    eval_size: int = field(
        default=1000,
        metadata=_help("Rows held out from the start of the stream for evaluation (training skips them)."),
    )
    shuffle_buffer: int = field(
        default=10_000, metadata=_help("Rows in the seeded shuffle buffer of the training stream (0: off).")
    )
    # How tokens are masked.
    mlm_probability: float = field(default=0.15, metadata=_help("Share of tokens selected for prediction."))
    mask_replace_prob: float = field(
        default=0.8, metadata=_help("Of the selected tokens, the share replaced by [MASK].")
    )
    random_replace_prob: float = field(
        default=0.1, metadata=_help("Of the selected tokens, the share replaced by a random token.")
    )
    whole_word_masking: bool = field(
        default=False, metadata=_help("Select whole words: all word pieces of a word or none.")
    )
    # How the model is trained, and how long.
    max_steps: int | None = field(
        default=None,
        metadata=_help(
            f"Optimizer steps to train for (default {DEFAULT_MAX_STEPS}; with --num-epochs, the steps the "
            "epochs take, or this many if fewer; with --time-budget alone, as many as the time allows)."
        ),
    )
    num_epochs: float | None = field(
        default=None,
        metadata=_help(
            "Passes over the training rows (local files or a Hub split of known size): the examples are "
            "counted first, and the run's steps follow."
        ),
    )
    time_budget: str | None = field(
        default=None,
        metadata=_help(
            "End the run, evaluated and saved, once its training has taken this long: '90m', '2h', "
            "'1h30m', or seconds. Without --max-steps the learning-rate schedule follows the elapsed "
            "share of the budget. Resumed runs count the time already spent."
        ),
    )
    batch_size: int = field(default=8, metadata=_help("Examples per batch on each device."))
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("Batches whose gradients are summed before one optimizer step.")
    )
    learning_rate: float = field(default=5e-5, metadata=_help("Peak learning rate of AdamW."))
    weight_decay: float = field(
        default=0.01, metadata=_help("AdamW weight decay (never applied to biases and LayerNorm).")
    )
    warmup_ratio: float = field(
        default=0.1, metadata=_help("Share of --max-steps spent warming the learning rate up from 0.")
    )
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping threshold (0: off)."))
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(
        default="auto",
        metadata=_help(
            "'auto': bf16 on GPUs that support it, else fp16 on CUDA; on a CPU bf16 only with bf16 in "
            "hardware (AVX512-BF16, AMX), else fp32."
        ),
    )
    data_workers: int = field(
        default=0,
        metadata=_help(
            "DataLoader worker processes that read, tokenize, mask and batch ahead of training (0: in the "
            "training process). Use 2-8 on GPUs; on a CPU they take cores from training. The example "
            "order depends on it; Ctrl-C then resumes from the last periodic checkpoint."
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_help(
            "torch.compile the encoder: a warm-up of tens of seconds; worth it on long GPU runs, no gain "
            "measured on a 2-core CPU."
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=_help(
            "Recompute activations in the backward pass: far less memory for big batches or long "
            "sequences, about a third more compute."
        ),
    )
    seed: int = field(default=42, metadata=_help("Seed of initialisation, shuffling and masking."))
    max_nonfinite_steps: int = field(
        default=5,
        metadata=_help("Stop after this many steps in a row with non-finite gradients (each is skipped)."),
    )
    # Checkpoints and resuming.
    checkpoint_every: int = field(
        default=500,
        metadata=_help("Steps between checkpoints in OUTPUT_DIR/checkpoints (0: only at the end)."),
    )
    resume: bool = field(
        default=True,
        metadata=_help("Continue from the newest good checkpoint in --output-dir, if there is one."),
    )
    force_resume: bool = field(
        default=False,
        metadata=_help("Resume even if settings that shape the run changed since the checkpoint."),
    )
    # What is reported and written.
    log_every: int = field(default=10, metadata=_help("Steps between log lines in metrics.jsonl."))
    eval_every: int = field(
        default=200, metadata=_help("Steps between evaluations (0: only at start and end).")
    )
    pseudo_perplexity: int = field(
        default=32,
        metadata=_help(
            "Score the first N held-out texts at each evaluation for their pseudo-perplexity (Salazar et "
            "al. 2020; word-l2r): each token masked in turn, a forward pass per token (0: off)."
        ),
    )
    save_best: bool = field(
        default=False,
        metadata=_help(
            "Save the model of the evaluation with the lowest held-out loss (before training, every "
            "--eval-every steps, at the end), not the last one."
        ),
    )
    early_stopping_patience: int = field(
        default=0,
        metadata=_help(
            "Stop after this many evaluations in a row without improvement (0: never stop early)."
        ),
    )
    early_stopping_min_delta: float = field(
        default=0.0, metadata=_help("How much lower the held-out loss must be to count as an improvement.")
    )
    output_dir: str = field(default="outputs", metadata=_help("Folder for metrics, plots and the summary."))
    model_dir: str = field(
        default="bert_finetuned", metadata=_help("Folder the fine-tuned model and tokenizer are saved to.")
    )
    report_to: Literal["none", "tensorboard", "wandb", "mlflow", "trackio", "all"] = field(
        default="none",
        metadata=_help(
            "Also send the metrics.jsonl records and the settings to an experiment tracker through "
            "Accelerate (from the main process): tensorboard (files in OUTPUT_DIR/runs), wandb, mlflow or "
            "trackio, each set up as its own docs say; 'all': every tracker Accelerate supports that is "
            "installed, none if none is; 'none': no tracker, no network."
        ),
    )
    run_name: str | None = field(
        default=None,
        metadata=_help("The run's name in wandb, mlflow or trackio (default: the output folder's name)."),
    )
    # Publishing on the Hugging Face Hub (publish.py).
    push_to_hub: str | None = field(
        default=None,
        metadata=_help(
            "Upload the model folder and the loss plot to this Hub repo (NAME or OWNER/NAME, created if "
            "missing) once the run has saved them; needs a token (hf auth login, or HF_TOKEN), which is "
            "checked before training.",
            metavar="REPO_ID",
        ),
    )
    hub_private: bool = field(
        default=False,
        metadata=_help("Create the --push-to-hub repo private (an existing repo keeps its visibility)."),
    )
    progress: bool = field(default=True, metadata=_help("Show a progress bar."))

    def __post_init__(self) -> None:
        if self.max_steps is None and self.num_epochs is None and self.time_budget is None:
            self.max_steps = DEFAULT_MAX_STEPS  # else prepare counts the epochs' steps, or the budget rules
        if self.data_files is not None:
            self.data_files = expand_data_files(self.data_files)
        validate(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_ratio * self.max_steps)

    @property
    def time_budget_seconds(self) -> float | None:
        """--time-budget in seconds (checked when the config was built), or None without one."""
        return parse_duration(self.time_budget) if self.time_budget else None

    @property
    def is_scratch(self) -> bool:
        return self.model.startswith(SCRATCH_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError for the first setting that cannot work."""
    positive = ("max_length", "max_steps", "batch_size", "gradient_accumulation_steps", "log_every",
                "max_nonfinite_steps")  # fmt: skip
    for name in positive:
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ConfigError(f"--{_flag(name)} must be at least 1, got {getattr(cfg, name)}.")
    for name in ("eval_size", "eval_every", "shuffle_buffer", "checkpoint_every", "data_workers",
                 "add_frequent_words", "early_stopping_patience", "early_stopping_min_delta",
                 "pseudo_perplexity"):  # fmt: skip
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{_flag(name)} cannot be negative, got {getattr(cfg, name)}.")
    if cfg.max_length < 8:
        raise ConfigError(f"--max-length {cfg.max_length} is too short: use at least 8 tokens.")
    if not 0.0 < cfg.mlm_probability < 1.0:
        raise ConfigError(f"--mlm-probability must be between 0 and 1, got {cfg.mlm_probability}.")
    for name in ("mask_replace_prob", "random_replace_prob", "warmup_ratio"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"--{_flag(name)} must be between 0 and 1, got {getattr(cfg, name)}.")
    if cfg.mask_replace_prob + cfg.random_replace_prob > 1.0 + 1e-9:
        raise ConfigError(
            f"--mask-replace-prob ({cfg.mask_replace_prob}) plus --random-replace-prob "
            f"({cfg.random_replace_prob}) is above 1: together they are shares of the selected tokens."
        )
    if cfg.learning_rate <= 0 or cfg.weight_decay < 0 or cfg.max_grad_norm < 0:
        raise ConfigError(
            "--learning-rate must be positive; --weight-decay and --max-grad-norm not negative."
        )
    model_dir, output_dir = Path(cfg.model_dir).resolve(), Path(cfg.output_dir).resolve()
    if model_dir == output_dir or model_dir in output_dir.parents or output_dir in model_dir.parents:
        raise ConfigError(
            f"--model-dir {cfg.model_dir} and --output-dir {cfg.output_dir} overlap: the model folder is "
            "replaced whole when it is saved, so neither may be inside the other. Give them separate paths."
        )
    if cfg.is_scratch and cfg.model[len(SCRATCH_PREFIX) :] not in SCRATCH_MODELS:
        raise ConfigError(f"Unknown model {cfg.model!r}: choose one of {', '.join(scratch_names())}.")
    if cfg.num_epochs is not None and cfg.num_epochs <= 0:
        raise ConfigError(f"--num-epochs must be positive, got {cfg.num_epochs}.")
    if cfg.time_budget is not None:
        parse_duration(cfg.time_budget)
    if cfg.early_stopping_patience and not cfg.eval_every:
        raise ConfigError(
            "--early-stopping-patience counts evaluations during training: give --eval-every N as well."
        )
    if cfg.push_to_hub is not None:
        check_repo_id(cfg.push_to_hub, "--push-to-hub")
    elif cfg.hub_private:
        raise ConfigError("--hub-private is for the repo of --push-to-hub REPO_ID: give both, or neither.")
    if cfg.add_tokens is not None and not Path(cfg.add_tokens).is_file():
        raise ConfigError(f"--add-tokens {cfg.add_tokens} is not a file: give a file of words, one per line.")
    if cfg.data_files is not None:
        if not cfg.data_files:
            raise ConfigError("--data-files was given without any file.")
        for path in cfg.data_files:
            if not Path(path).is_file():
                raise ConfigError(f"Data file not found: {path}. Check the path, or drop --data-files.")
            if Path(path).suffix.lower() not in DATA_FILE_LOADERS:
                raise ConfigError(
                    f"Cannot read {path}: use files ending in {', '.join(sorted(DATA_FILE_LOADERS))}."
                )
        if len({Path(p).suffix.lower() for p in cfg.data_files}) > 1:
            kinds = ", ".join(sorted({Path(p).suffix.lower() for p in cfg.data_files}))
            raise ConfigError(f"--data-files mixes file types ({kinds}): give files of one type per run.")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as '90m', '2h', '1h30m', '45s' or '3600'.

    >>> parse_duration("1h30m")
    5400.0
    """
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    parts = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
    )
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ConfigError(
            f"--time-budget {text!r} is not a duration: write it as '90m', '2h', '1h30m' or seconds."
        )
    seconds = sum(float(value) * unit for value, unit in zip(parts.groups(), units.values()) if value)
    if seconds <= 0:
        raise ConfigError(f"--time-budget {text!r} is no time at all: give a positive duration.")
    return seconds


def expand_data_files(paths: list[str]) -> list[str]:
    """--data-files as files: a folder stands for its files of the types we read, sorted; a pattern
    (``"books/*.txt"``, quoted so that the shell leaves it) for the files it matches, sorted. Anything
    else is kept as given, for `validate` to check."""
    files: list[str] = []
    for given in paths:
        if Path(given).is_dir():
            found = sorted(str(p) for p in Path(given).iterdir() if p.suffix.lower() in DATA_FILE_LOADERS)
            if not found:
                raise ConfigError(
                    f"--data-files {given} is a folder without files of a type we read "
                    f"({', '.join(sorted(DATA_FILE_LOADERS))})."
                )
            files += found
        elif glob.has_magic(given) and not Path(given).exists():
            found = sorted(p for p in glob.glob(given, recursive=True) if Path(p).is_file())
            if not found:
                raise ConfigError(f"--data-files {given} matches no file. Check the pattern.")
            files += found
        else:
            files.append(given)
    return files


def check_repo_id(repo_id: str, what: str) -> None:
    """Raise ConfigError unless `repo_id` has the shape of a Hub repo id, NAME or OWNER/NAME; `what`
    names it in the message (such as "--push-to-hub")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # only when a push is asked for

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(
            f"{what} {repo_id!r} is not a Hub repo id: write NAME or OWNER/NAME, such as "
            "alice/bert-finetuned, with letters, digits, '-', '_' and '.' (none of '-' and '.' first or "
            "last, no '--' or '..'), the name at most 96 characters."
        ) from None


def _flag(name: str) -> str:
    return name.replace("_", "-")


# File suffix -> the `datasets` packaged loader that reads it.
DATA_FILE_LOADERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

# Small models built from a config (see modeling.py), with a vocabulary trained on the run's text:
# name -> (family, layers, hidden, heads, intermediate, vocab).
SCRATCH_MODELS = {
    "tiny": ("bert", 2, 128, 2, 512, 3000),
    "mini": ("bert", 4, 256, 4, 1024, 8000),
    "roberta-tiny": ("roberta", 2, 128, 2, 512, 3000),
}


def scratch_names() -> list[str]:
    return [SCRATCH_PREFIX + name for name in SCRATCH_MODELS]


# Named sets of overrides. "quick" runs the whole job offline in a couple of minutes on a laptop CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "model": "scratch:tiny",
        "data_files": None,  # filled in by preset(): the shipped sample corpus
        # One sentence per example: a model learning from scratch in a few minutes picks up context
        # much sooner when every example starts at a sentence start (measured: held-out loss 5.0
        # against 5.5 for packed 64-token blocks, same steps). Packing pays off at scale, not here.
        "packing": "sentence",
        "max_length": 48,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "max_steps": 1500,
        "warmup_ratio": 0.05,
        "eval_size": 300,
        "eval_every": 250,
        "log_every": 25,
        "shuffle_buffer": 2000,
        # fp32 wherever it runs: a model this small gains less from bf16 than the casts cost (the quick
        # run on a 2-core CPU with AMX: 25,000 tokens/s in fp32, 21,600 with bf16 autocast), and what it
        # learns does not then depend on whether the CPU has bf16.
        "mixed_precision": "no",
    },
}


def config_default(name: str) -> Any:
    """The default of one TrainConfig field, for the commands that take it outside a config."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]


def preset(name: str) -> dict[str, Any]:
    """The overrides a preset applies, with paths resolved."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    values = dict(PRESETS[name])
    if name == "quick":
        values["data_files"] = sample_corpus_files()
    return values


def make_config(preset_name: str | None = None, **overrides: Any) -> TrainConfig:
    """Build a validated config: defaults, then a preset's values, then explicit overrides.

    >>> cfg = make_config("quick", max_steps=50)
    >>> cfg.model, cfg.max_steps
    ('scratch:tiny', 50)
    """
    values = preset(preset_name) if preset_name else {}
    values.update(overrides)
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"Unknown setting(s): {', '.join(sorted(unknown))}.")
    return TrainConfig(**values)
