"""Checkpoints of the whole training state: atomic, verified, and loaded without running any code.

A checkpoint is a folder ``checkpoints/step-00000500/`` holding the model (safetensors), the optimizer
state (a tensor-only torch file), the random-number states, and ``trainer.json`` (step, schedule, data
position, config, counters), and ``manifest.json`` (the sha256 of every file). It is written as every
folder is (`fileio.write_folder`): in a staging folder, flushed to disk, and only then put in place, so
a crash or a full disk mid-save leaves no folder that looks complete. Loading checks every hash, and
falls back to the previous checkpoint when the newest one is damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import ConfigError, config_default
from ..fileio import leftovers, write_folder

MANIFEST = "manifest.json"
PREFIX = "step-"
KEEP = 2  # complete checkpoints kept; an older one is deleted only after a newer one is complete
# 2: states keyed by parameter name (1 keyed the optimizer's by position and named no format).
FORMAT = 2
# Settings a resumed run must share with the run that wrote the checkpoint.
GUARDED_FIELDS = (
    *("model", "dataset", "dataset_config", "dataset_revision", "split", "text_column", "data_files"),
    *("txt_unit", "packing", "max_length", "batch_size", "gradient_accumulation_steps", "seed"),
    *("mlm_probability", "mask_replace_prob", "random_replace_prob", "whole_word_masking"),
    *("shuffle_buffer", "eval_size", "data_workers", "add_tokens", "add_frequent_words", "save_best"),
    "pseudo_perplexity",  # the texts the "before" figure in the checkpoint was measured on
)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: damaged, unsafe, or written by a different configuration."""


@dataclass
class TrainingState:
    """Where a run stands after an optimizer step, besides its weights and optimizer: everything else a
    checkpoint holds, written (`save_checkpoint`) and read (`Checkpoint.load`) in one place.

    `data` and `rng` hold one entry per process, in rank order: each process resumes its own.
    """

    step: int
    config: dict  # TrainConfig.to_dict() of the run that wrote it
    before: dict  # the held-out metrics before training, reported again at the end
    processes: int
    data: list[dict]  # each process's data position (TrackedBatches.state_dict)
    rng: list[dict]  # each process's random-number states (rng_state), tensors: saved in rng.pt
    schedule: dict  # the learning-rate schedule's state_dict
    scaler: dict | None  # the fp16 loss scaler's, if any
    data_files: list[dict]  # fingerprint_files of the local data files
    best: dict | None = None  # the evaluation with the lowest held-out loss so far: its step and metrics
    stale_evals: int = 0  # evaluations since the best one (--early-stopping-patience)
    seconds: float = 0.0  # time spent training, over all runs that led here (--time-budget)


@dataclass
class Checkpoint:
    """A verified checkpoint on disk and its ``trainer.json`` contents."""

    path: Path
    trainer: dict

    @property
    def step(self) -> int:
        return self.trainer["step"]

    def load(self) -> tuple[dict, dict, TrainingState]:
        """The model's and the optimizer's states, keyed by parameter name, and the training state."""
        model_state = load_file(self.path / "model.safetensors")
        rng = _load_tensors(self.path / "rng.pt")["per_process"]
        names = ("config", "before", "processes", "data", "schedule", "scaler")
        kept = {name: self.trainer[name] for name in names}
        # Absent from older checkpoints: data_files (check_data_files says so), best, stale_evals, seconds.
        later = {
            name: self.trainer[name] for name in ("best", "stale_evals", "seconds") if name in self.trainer
        }
        state = TrainingState(self.step, rng=rng, data_files=self.trainer.get("data_files"), **kept, **later)
        return model_state, _load_tensors(self.path / "optimizer.pt"), state


def save_checkpoint(
    folder: str | Path, state: TrainingState, model_state: dict, optimizer_state: dict
) -> Path:
    """Write a checkpoint of `state` under `folder` atomically, then drop all but the newest KEEP.

    The model's and optimizer's states are keyed by parameter name (`distributed.full_state`), whether
    they came from one process or were gathered from shards.
    """
    folder = Path(folder)
    step = state.step
    trainer = {**asdict(state), "format": FORMAT}
    rng = {"per_process": trainer.pop("rng")}

    def fill(staging: Path) -> None:
        save_file(model_state, str(staging / "model.safetensors"))
        torch.save(optimizer_state, staging / "optimizer.pt")
        torch.save(rng, staging / "rng.pt")
        (staging / "trainer.json").write_text(json.dumps(trainer), encoding="utf-8")
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        manifest = json.dumps({"step": step, "files": files}, indent=1)
        (staging / MANIFEST).write_text(manifest, encoding="utf-8")

    # A checkpoint of this step from an earlier attempt is replaced.
    target = write_folder(folder / f"{PREFIX}{step:08d}", fill, what="the checkpoint folder")
    drop_old_checkpoints(folder, target)
    return target


def drop_old_checkpoints(folder: str | Path, newest: Path) -> None:
    """Delete the complete checkpoints beyond the KEEP newest, when `newest` (complete, verified) is the
    newest of all. Called after each save, and on resuming: a process killed between a save and this
    clean-up leaves one checkpoint too many, which nothing else would remove once training is done."""
    found = complete_checkpoints(folder)
    if found and found[0] == Path(newest):
        for old in found[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in leftovers(folder):  # staging folders of saves that a kill cut short
        shutil.rmtree(leftover, ignore_errors=True)


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint folders that have a manifest, newest first (temporary folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def verify(path: str | Path) -> Checkpoint:
    """Check a checkpoint's manifest and hashes; raise CheckpointError naming what is wrong."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        for name, digest in manifest["files"].items():
            if _sha256(path / name) != digest:
                raise CheckpointError(f"{path / name} does not match its manifest: the file is damaged.")
        trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path} is incomplete or damaged: {error}") from None
    if trainer.get("step") != manifest.get("step"):
        raise CheckpointError(f"{path}: trainer.json and the manifest disagree on the step.")
    return Checkpoint(path, trainer)


def latest_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged newer ones are reported and skipped."""
    for path in complete_checkpoints(folder):
        try:
            return verify(path)
        except CheckpointError as error:
            warnings.warn(f"Skipping a damaged checkpoint: {error}", stacklevel=2)
    return None


def check_compatible(saved: dict, current: dict, force: bool = False) -> None:
    """Refuse to resume when a setting that shapes the run changed, unless `force`. A setting that the
    checkpoint's version did not have counts as its default."""
    was = {name: saved.get(name, config_default(name)) for name in GUARDED_FIELDS}
    changed = [name for name in GUARDED_FIELDS if was[name] != current.get(name)]
    if changed and not force:
        details = "; ".join(
            f"--{n.replace('_', '-')} was {was[n]!r}, now {current.get(n)!r}" for n in changed
        )
        raise CheckpointError(
            f"The checkpoint was written with other settings: {details}. Use the same settings, another "
            "--output-dir, --no-resume to start over, or --force-resume to continue anyway."
        )


HASHED_BYTES = 1 << 20  # a file's first and last MiB are hashed; smaller files whole


def fingerprint_files(paths: list[str]) -> list[dict]:
    """What identifies each local data file's contents: its size, modification time and the sha256 of
    its first and last MiB (of all of it, when it is at most 2 MiB). Hashing 2 MiB takes milliseconds
    where hashing a 50 GB corpus whole would take minutes at every checkpoint."""
    prints = []
    for path in paths:
        size = os.path.getsize(path)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            if size <= 2 * HASHED_BYTES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(HASHED_BYTES))
                handle.seek(size - HASHED_BYTES)
                digest.update(handle.read(HASHED_BYTES))
        prints.append({"path": str(path), "size": size, "mtime_ns": os.stat(path).st_mtime_ns,
                       "sha256": digest.hexdigest(), "whole": size <= 2 * HASHED_BYTES})  # fmt: skip
    return prints


def guarded_files(cfg) -> list[str]:
    """The local files a resumed run must find unchanged: the data files, then the --add-tokens list."""
    return [*(cfg.data_files or []), *([cfg.add_tokens] if cfg.add_tokens else [])]


def check_data_files(
    saved: list[dict] | None, paths: list[str], force: bool = False, word_list: str | None = None
) -> None:
    """Refuse to resume on data files whose contents changed since the checkpoint, unless `force`.

    The paths themselves are compared with the other settings (check_compatible). A file hashed whole
    is judged by its hash alone; a larger one also by its modification time, since the middle of it is
    not hashed."""
    if saved is None:
        if paths:
            warnings.warn(
                "The checkpoint holds no fingerprint of its data files (an older version wrote it): the "
                "files could not be checked for changes.",
                stacklevel=2,
            )
        return
    if force:
        return
    for before, now in zip(saved, fingerprint_files(paths)):
        if before["size"] != now["size"]:
            why = f"its size was {before['size']:,} bytes, now {now['size']:,}"
        elif before["sha256"] != now["sha256"]:
            why = "its contents differ"
        elif not before["whole"] and before["mtime_ns"] != now["mtime_ns"]:
            why = "it was modified since (its start and end are the same, its middle may not be)"
        else:
            continue
        raise CheckpointError(
            f"The {'word list' if now['path'] == word_list else 'data file'} {now['path']} changed since the "
            f"checkpoint was written: {why}. A resumed run would read other text, or add other words, than "
            "the run it continues. Restore the file, or use --no-resume to start over (--force-resume "
            "continues anyway, e.g. if only its date changed)."
        )


def check_processes(trainer: dict, processes: int) -> None:
    """Refuse a checkpoint written by another number of processes: each one's data position is its own,
    or by an older version of this package."""
    saved = trainer.get("processes")
    if saved is None or trainer.get("format") != FORMAT:
        raise CheckpointError(
            "The checkpoint was written by an older version of mlm_helpers, in another format. Use "
            "--no-resume to start over, or another --output-dir."
        )
    if saved != processes:
        raise CheckpointError(
            f"The checkpoint was written by {saved} process(es) and this run has {processes}: each process "
            f"resumes its own share of the data. Launch {saved} process(es), or use --no-resume."
        )


def _load_tensors(path: Path):
    # weights_only=True admits tensors and plain containers only: a pickle that would run code is
    # refused before anything in it runs. There is deliberately no fallback to a full unpickle.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own text goes on to explain how to load the file anyway: we never suggest that.
        wanted = re.search(r"GLOBAL ([\w.]+)", str(error))
        asks = f" (it asks for {wanted.group(1)})" if wanted else ""
        raise CheckpointError(
            f"Refusing to load {path}: it holds more than tensors{asks}, and could run code when loaded; "
            "nothing in it was run. Delete that checkpoint folder if you did not write it."
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict:
    """This process's random-number states that training draws from (dropout): CPU, and its GPUs."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
