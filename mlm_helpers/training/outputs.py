"""What a run leaves for its user: the model folder and its model card, the metrics log, the loss plot,
and the before/after table.

Folders and files are written through fileio.py, so a crash mid-save leaves the previous version intact
instead of a half-written one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCardData, metadata_load, try_to_load_from_cache

from ..config import DATA_FILE_LOADERS, TrainConfig
from ..data.sources import TextSource
from ..fileio import WriteError, write_file_atomic, write_folder, write_text_atomic
from .loop import EvalMetrics


def save_model(model, tokenizer, model_dir: str | Path, card: str, state_dict: dict | None = None) -> Path:
    """Save weights (safetensors), tokenizer and a model card to `model_dir`, atomically (`write_folder`).

    The folder loads with plain ``AutoModelForMaskedLM.from_pretrained(model_dir)`` and
    ``AutoTokenizer.from_pretrained(model_dir)``. `state_dict` replaces the model's own weights (a
    sharded model's, gathered). A `model_dir` holding anything but a model saved here is refused.
    """

    def fill(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(card, encoding="utf-8")

    return write_folder(model_dir, fill, what="--model-dir")


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and keeps the records for plotting."""

    def __init__(self, path: str | Path, keep_through_step: int | None = None) -> None:
        """Start a new log, or with `keep_through_step` continue one: records up to that step stay."""
        self.path = Path(path)
        self.records: list[dict] = []
        if keep_through_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # the half line of an append that a full disk or a kill cut short
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= keep_through_step:
                    self.records.append(record)
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(_finite_or_none(record)) + "\n")
        except OSError as error:
            raise WriteError(
                f"Could not add to {self.path} ({error.strerror or error}): free some space, or check that "
                "the folder is writable; the checkpoints are intact, and the same command resumes.",
                str(error),
            ) from None


def _finite_or_none(record: dict) -> dict:
    # JSON has no NaN: a non-finite number is written as null, never as 0.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def plot_losses(records: Iterable[dict], path: str | Path) -> Path:
    """Training and evaluation loss against step, as a PNG."""
    from ..plots import loss_figure

    path = Path(path)
    figure = loss_figure(list(records))
    write_file_atomic(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    return path


@dataclass
class RunResult:
    """What a training run produced."""

    before: EvalMetrics
    after: EvalMetrics
    model_dir: Path
    output_dir: Path
    steps: int
    seconds: float
    device: str
    mixed_precision: str
    history: list[dict] = field(default_factory=list)
    processes: int = 1
    main_process: bool = True  # False in the other processes of a multi-process run: they write nothing
    best_step: int | None = None  # --save-best: the step whose model was saved ("after" is its metrics)
    stop_reason: str | None = None  # why the run ended before its last step (early stopping, time budget)

    def table(self) -> str:
        """Before/after metrics as a small text table; the pseudo-perplexity's row only where it was
        measured ("-" for a side without it: a run resumed from a checkpoint that did not measure it)."""
        rows = [
            ("loss", "loss", "{:.3f}"),
            ("perplexity", "perplexity", "{:.1f}"),
            ("top-1 accuracy", "top1", "{:.1%}"),
            ("top-5 accuracy", "top5", "{:.1%}"),
            ("pseudo-perplexity", "pseudo_perplexity", "{:.1f}"),
        ]
        lines = [f"{'metric':<18}{'before':>10}{'after':>10}"]
        for label, key, fmt in rows:
            values = getattr(self.before, key), getattr(self.after, key)
            if values != (None, None):
                before, after = ("-" if v is None else fmt.format(v) for v in values)
                lines.append(f"{label:<18}{before:>10}{after:>10}")
        return "\n".join(lines)


WIDGET_TEXT = "The capital of France is {mask}."  # the Hub's fill-mask widget, with the model's mask


def run_end(result: RunResult) -> str:
    """The card's words for a run that stopped early, or saved another step's model than its last."""
    lines = f"\n- Stopped early: {result.stop_reason}" if result.stop_reason else ""
    if result.best_step is not None:
        lines += f"\n- Saved: the model of step {result.best_step}, the lowest held-out loss (--save-best)"
    return lines


def model_card(cfg: TrainConfig, result: RunResult, mask_token: str, model_type: str) -> str:
    """The model folder's README.md: the YAML header the Hub reads (task, library, base model, data,
    language and license when the base model's card states them, tags, a fill-mask widget written with
    `mask_token`, held-out metrics before and after training), then what was run and how to use it."""
    source = TextSource.from_config(cfg).describe()
    name = cfg.push_to_hub or cfg.model_dir
    example = WIDGET_TEXT.format(mask=mask_token)
    base = {} if cfg.is_scratch else base_card_metadata(cfg.model)
    inherited = {k: base[k] for k in ("language", "license", "license_name", "license_link") if base.get(k)}
    data = ModelCardData(
        model_name=cfg.push_to_hub or Path(cfg.model_dir).name,
        base_model=None if cfg.is_scratch else base_model(cfg.model, base),
        datasets=None if cfg.data_files else [cfg.dataset],
        library_name="transformers",
        pipeline_tag="fill-mask",
        tags=list(dict.fromkeys(["fill-mask", "masked-lm", "mlm_helpers", model_type])),
        mask_token=mask_token,
        widget=[{"text": example}],
        eval_results=eval_results(cfg, result) or None,
        **inherited,
    )
    return f"""---
{data.to_yaml()}
---

# Fine-tuned masked-language model

Written by `mlm_helpers` (bert-mlm-finetuning).

- Base model: `{cfg.model}`
- Data: {source}, {cfg.packing} examples of {cfg.max_length} tokens, {cfg.eval_size} rows held out
- Masking: {cfg.mlm_probability:.0%} of tokens selected; {cfg.mask_replace_prob:.0%} masked, \
{cfg.random_replace_prob:.0%} random{", whole words" if cfg.whole_word_masking else ""}
- Training: {result.steps} steps, batch {cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation \
x {result.processes} process(es), \
AdamW at {cfg.learning_rate:g} with linear warmup and decay, seed {cfg.seed}, on {result.device} \
({result.mixed_precision} mixed precision), {result.seconds:.0f} s{run_end(result)}

## Held-out evaluation

```
{result.table()}
```

## Use

```python
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

model = AutoModelForMaskedLM.from_pretrained("{name}")
tokenizer = AutoTokenizer.from_pretrained("{name}")
fill_mask = pipeline("fill-mask", model=model, tokenizer=tokenizer)
fill_mask("{example}")
```
"""


def base_card_metadata(model: str) -> dict:
    """The YAML header of the base model's own card: a local folder's README.md, or a Hub model's when
    the local Hugging Face cache holds it (nothing is downloaded); {} when there is none to read."""
    card = Path(model) / "README.md"
    if not Path(model).is_dir():
        try:
            cached = try_to_load_from_cache(model, "README.md")
        except ValueError:  # not a Hub id
            return {}
        if not isinstance(cached, str):
            return {}
        card = Path(cached)
    try:
        header = metadata_load(card)
    except (OSError, ValueError, yaml.YAMLError):  # no card, or a header that is not YAML
        return {}
    return header if isinstance(header, dict) else {}


def base_model(model: str, base: dict) -> str | list[str]:
    """What the card names as its base model: a Hub model's id; for a local folder, the base model its
    own card names (the Hub model it descends from), else the folder's name."""
    if not Path(model).is_dir():
        return model
    return base.get("base_model") or Path(model).resolve().name


def eval_results(cfg: TrainConfig, result: RunResult) -> list:
    """The held-out metrics before and after training, as the Hub's model-index entries (non-finite
    ones, of a run without held-out rows, and a pseudo-perplexity not measured, left out)."""
    if cfg.data_files:
        loader = DATA_FILE_LOADERS[Path(cfg.data_files[0]).suffix.lower()]
        dataset = {"dataset_type": loader, "dataset_name": TextSource.from_config(cfg).describe()}
    else:
        dataset = {"dataset_type": cfg.dataset, "dataset_name": cfg.dataset, "dataset_split": cfg.split}
        dataset |= {"dataset_config": cfg.dataset_config, "dataset_revision": cfg.dataset_revision}
    metrics = [
        ("loss", "loss", "held-out loss"),
        ("perplexity", "perplexity", "held-out perplexity"),
        ("top1", "accuracy", "held-out top-1 accuracy"),
        ("top5", "top_5_accuracy", "held-out top-5 accuracy"),
        ("pseudo_perplexity", "pseudo-perplexity", "held-out pseudo-perplexity"),
    ]
    return [
        EvalResult(
            "fill-mask",
            metric_type=kind,
            metric_value=value,
            metric_name=f"{label} {when} training",
            task_name="Masked language modeling",
            **dataset,
        )
        for when, measured in (("after", result.after), ("before", result.before))
        for key, kind, label in metrics
        if (value := getattr(measured, key)) is not None and math.isfinite(value)
    ]
