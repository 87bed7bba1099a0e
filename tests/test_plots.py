import matplotlib
import pytest

from mlm_helpers.plots import candidates_figure, format_probability, top_k_figure, training_figure
from mlm_helpers.training.outputs import plot_losses

from .conftest import candidate

RECORDS = [
    {"step": 0, "eval_loss": 9.0, "eval_perplexity": 8103.0},
    {"step": 10, "loss": 8.0, "learning_rate": 1e-3, "grad_norm": 2.0, "tokens_per_second": 900.0},
    {"step": 20, "loss": 6.5, "learning_rate": 5e-4, "grad_norm": None, "tokens_per_second": 1000.0},
    {"step": 20, "eval_loss": 6.9, "eval_perplexity": 992.0},
    {"step": 30, "loss": None, "learning_rate": 0.0, "grad_norm": 1.0, "tokens_per_second": 950.0},
]


def line_data(axis) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}


def test_training_figure_plots_loss_learning_rate_and_throughput():
    figure = training_figure(RECORDS)
    loss_axis, lr_axis, speed_axis = figure.axes
    lines = line_data(loss_axis)
    assert lines["training loss"] == ([10, 20], [8.0, 6.5])  # the step without a loss is left out
    assert lines["evaluation loss"] == ([0, 20], [9.0, 6.9])
    assert lr_axis.get_lines()[0].get_ydata().tolist() == [1e-3, 5e-4, 0.0]
    assert speed_axis.get_lines()[0].get_xdata().tolist() == [10, 20, 30]
    assert speed_axis.get_ylim()[0] == 0


def test_plot_losses_writes_a_png_without_switching_the_backend(tmp_path):
    backend = matplotlib.get_backend()
    path = plot_losses(RECORDS, tmp_path / "plots" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend  # a notebook keeps showing figures inline


def test_top_k_figure_draws_a_panel_per_sentence_and_model_on_one_scale():
    sentences = ["a [MASK] b", "c [MASK] d"]
    predictions = {
        "before": [[candidate("x", 0.01), candidate("y", 0.005)], [candidate("z", 0.002)]],
        "after": [[candidate("x", 0.6), candidate("w", 0.3)], [candidate("v", 0.2)]],
    }
    figure = top_k_figure(sentences, predictions)
    assert len(figure.axes) == 4
    assert [sub.get_suptitle() for sub in figure.subfigs] == sentences
    assert [axis.get_xlim() for axis in figure.axes] == [(0, pytest.approx(1.2 * 0.6))] * 4
    after_first = figure.axes[1]
    assert after_first.get_title() == "after"
    # Most likely on top: bars are drawn bottom-up.
    assert [bar.get_width() for bar in after_first.patches] == [0.3, 0.6]
    assert [label.get_text() for label in after_first.get_yticklabels()] == ["w", "x"]


def test_candidates_figure_has_a_panel_per_mask():
    figure = candidates_figure([[candidate("a", 0.5)], [candidate("b", 0.25), candidate("c", 0.2)]], "t")
    assert [axis.get_title() for axis in figure.axes] == ["[MASK] 1", "[MASK] 2"]
    with pytest.raises(ValueError, match="No \\[MASK\\]"):
        candidates_figure([])


@pytest.mark.parametrize(
    ("probability", "text"),
    [(0.41, "41%"), (0.1, "10%"), (0.042, "4.2%"), (0.001, "0.1%"), (0.0004, "<0.1%"), (1.0, "100%")],
)
def test_format_probability(probability, text):
    assert format_probability(probability) == text
