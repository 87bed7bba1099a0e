import pytest

from mlm_helpers import predict_top_k_masked_word
from mlm_helpers.notebook.comparison import candidates_table
from mlm_helpers.notebook.interactive import fill_mask_explorer, widgets_available


def test_without_widgets_it_is_a_plain_call_returning_the_candidates(model, tokenizer):
    text = "She poured a cup of [MASK] and sat by the [MASK]."
    table = fill_mask_explorer(model, tokenizer, text, top_k=4, use_widgets=False)
    expected = candidates_table(predict_top_k_masked_word(text, model, tokenizer, top_k=4))
    assert table.equals(expected) and table.shape == (4, 2)


def test_outside_a_kernel_widgets_are_not_offered(model, tokenizer):
    assert not widgets_available()  # pytest runs no Jupyter kernel
    assert fill_mask_explorer(model, tokenizer, top_k=2).shape == (2, 1)


def test_widget_has_a_text_box_and_a_slider_and_reports_bad_input(model, tokenizer, capsys):
    widgets = pytest.importorskip("ipywidgets")
    explorer = fill_mask_explorer(
        model, tokenizer, "The [MASK] is here.", top_k=3, max_k=10, use_widgets=True
    )
    box, slider, output = explorer.children
    assert isinstance(box, widgets.Text) and box.value == "The [MASK] is here."
    assert isinstance(slider, widgets.IntSlider) and (slider.value, slider.min, slider.max) == (3, 1, 10)
    assert isinstance(output, widgets.Output)
    box.value = "A sentence without a mask."
    assert "no [MASK] token" in capsys.readouterr().out  # outside a kernel the output lands on stdout
