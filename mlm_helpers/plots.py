"""Figures of a run: the loss curve, the learning-rate schedule, throughput, memory, and top-k predictions.

Every function returns a `matplotlib.figure.Figure` built without pyplot: no global figure list to
leak from, no backend switched behind a notebook's back, and a figure shows once, where it is returned.
In Jupyter a returned figure displays inline; elsewhere, call ``figure.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

if TYPE_CHECKING:  # figures import nothing of ours: they read .token and .probability only
    from .predict.results import Candidate


def format_probability(probability: float) -> str:
    """A probability as a short percentage: "41%", "4.2%", or "<0.1%" for the long tail."""
    if probability >= 0.1:
        return f"{probability:.0%}"
    return f"{probability:.1%}" if probability >= 0.001 else "<0.1%"


def _series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that carry a finite `key`."""
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def _draw_losses(axis: Axes, records: Sequence[dict]) -> None:
    steps, losses = _series(records, "loss")
    if steps:
        axis.plot(steps, losses, label="training loss")
    steps, losses = _series(records, "eval_loss")
    if steps:
        axis.plot(steps, losses, marker="o", label="evaluation loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("masked-token cross-entropy")
    axis.set_title("Loss")
    axis.grid(alpha=0.3)
    axis.legend()


def loss_figure(records: Sequence[dict]) -> Figure:
    """Training and evaluation loss against step, from the records of ``metrics.jsonl``.

    >>> loss_figure(result.history).savefig("loss.png")
    """
    figure = Figure(figsize=(7, 4), layout="tight")
    _draw_losses(figure.subplots(), records)
    return figure


def _draw_memory(axis: Axes, records: Sequence[dict]) -> None:
    for key, label in (("peak_memory_gib", "peak"), ("memory_gib", "at the log step")):
        steps, values = _series(records, key)
        axis.plot(steps, values, marker=".", label=label)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("GiB")
    axis.set_title("Memory (GPU tensors, or the process's RSS on a CPU)")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()


def training_figure(records: Sequence[dict]) -> Figure:
    """Three panels: loss (training and evaluation), learning rate, and training tokens per second; and
    a fourth, memory, when the records carry it.

    >>> training_figure(result.history)  # in a notebook, shows inline
    """
    memory = any("peak_memory_gib" in r for r in records)
    figure = Figure(figsize=(20 if memory else 15, 4), layout="tight")
    loss_axis, lr_axis, speed_axis, *memory_axis = figure.subplots(1, 4 if memory else 3, sharex=True)
    _draw_losses(loss_axis, records)
    if memory:
        _draw_memory(memory_axis[0], records)
    for axis, key, title in (
        (lr_axis, "learning_rate", "Learning rate (linear warmup, then decay)"),
        (speed_axis, "tokens_per_second", "Throughput (tokens per second)"),
    ):
        steps, values = _series(records, key)
        axis.plot(steps, values, marker=".")
        axis.set_xlabel("optimizer step")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    speed_axis.set_ylim(bottom=0)
    return figure


def _draw_candidates(axis: Axes, candidates: Sequence[Candidate], title: str, x_max: float) -> None:
    # Most likely on top: barh draws the first bar at the bottom, so reverse.
    ordered = list(candidates)[::-1]
    axis.barh([c.token for c in ordered], [c.probability for c in ordered], color="tab:blue")
    axis.set_xlim(0, x_max)
    axis.xaxis.set_major_formatter(PercentFormatter(1.0))
    for bar, candidate in zip(axis.patches, ordered):
        axis.annotate(
            format_probability(candidate.probability),
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    axis.set_title(title, fontsize=10)
    axis.tick_params(axis="x", labelsize=8)


def _shared_x_max(groups: Iterable[Sequence[Candidate]]) -> float:
    """One probability scale for every panel, so that bars compare across them; room for the labels."""
    return 1.2 * max((c.probability for candidates in groups for c in candidates), default=1.0)


def top_k_figure(
    sentences: Sequence[str], predictions: Mapping[str, Sequence[Sequence[Candidate]]]
) -> Figure:
    """Bar charts of top-k probabilities: one row per sentence, one panel per model (e.g. before, after).

    `predictions` maps a model's label to its candidates for each sentence, as returned by
    `comparison.predictions_by_model`. All panels share one probability scale.
    """
    labels = list(predictions)
    x_max = _shared_x_max(c for per_sentence in predictions.values() for c in per_sentence)
    figure = Figure(figsize=(4.5 * len(labels), 2.4 * len(sentences)), layout="constrained")
    for row, (sentence, panel) in enumerate(
        zip(sentences, figure.subfigures(len(sentences), 1, squeeze=False))
    ):
        panel = panel[0]
        panel.suptitle(sentence, fontsize=11, fontweight="bold")
        for axis, label in zip(panel.subplots(1, len(labels), squeeze=False)[0], labels):
            _draw_candidates(axis, predictions[label][row], label, x_max)
    return figure


def candidates_figure(results: Sequence[Sequence[Candidate]], text: str = "") -> Figure:
    """Bar charts of the candidates for each [MASK] of one text (as `predict_top_k_masked_word` returns)."""
    if not results:
        raise ValueError("No [MASK] to draw: results is empty.")
    height = 0.35 * max(len(c) for c in results) + 1.2
    figure = Figure(figsize=(5 * len(results), height), layout="constrained")
    if text:
        figure.suptitle(text, fontsize=11)
    x_max = _shared_x_max(results)
    for number, (axis, candidates) in enumerate(
        zip(figure.subplots(1, len(results), squeeze=False)[0], results)
    ):
        _draw_candidates(axis, candidates, f"[MASK] {number + 1}" if len(results) > 1 else "", x_max)
    return figure
