"""Every byte the project writes to or reads from disk: the saved model, metrics, plots, the summary.

Writes are atomic (fileio.py): a folder or file is written beside its target under a temporary name,
then takes its place, so a crash mid-save leaves the previous version intact instead of a half-written
one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from .fileio import write_folder, write_text_atomic
from .modeling import load_pretrained


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


def load_model(model_dir: str | Path):
    """Load a saved (or Hub) masked-LM model and its tokenizer: ``model, tokenizer = load_model(path)``."""
    return load_pretrained(str(model_dir))


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and keeps the records for plotting."""

    def __init__(self, path: str | Path, keep_through_step: int | None = None) -> None:
        """Start a new log, or with `keep_through_step` continue one: records up to that step stay."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        if keep_through_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line) if line.strip() else None
                if record and record.get("step", 0) <= keep_through_step:
                    self.records.append(record)
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_finite_or_none(record)) + "\n")


def _finite_or_none(record: dict) -> dict:
    # JSON has no NaN: a non-finite number is written as null, never as 0.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def plot_losses(records: Iterable[dict], path: str | Path) -> Path:
    """Training and evaluation loss against step, as a PNG."""
    from .plots import loss_figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    loss_figure(list(records)).savefig(path, dpi=120)
    return path
