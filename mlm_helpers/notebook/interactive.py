"""Ask a model about your own sentences: a text box and a top-k slider in Jupyter, a table elsewhere."""

from __future__ import annotations

import importlib.util

from ..plots import candidates_figure
from ..predict.inputs import PredictionError
from ..predict.predictor import EXAMPLE_SENTENCES, predict_top_k_masked_word
from .comparison import candidates_table


def widgets_available() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed: where a widget can be shown at all."""
    if importlib.util.find_spec("ipywidgets") is None:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def fill_mask_explorer(
    model,
    tokenizer,
    text: str = EXAMPLE_SENTENCES[2],
    top_k: int = 5,
    *,
    max_k: int = 20,
    use_widgets: bool | None = None,
):
    """A text box (type a sentence with [MASK]) and a top-k slider, showing the model's candidates as a
    bar chart that updates when either changes.

    Where widgets cannot be shown (no ipywidgets, plain Python, or ``use_widgets=False``) this is a plain
    function call: it returns the table of candidates for `text`, and can be called again with another.

    >>> fill_mask_explorer(model, tokenizer)  # last line of a notebook cell
    """
    if use_widgets is None:
        use_widgets = widgets_available()
    if not use_widgets:
        return candidates_table(predict_top_k_masked_word(text, model, tokenizer, top_k=top_k))

    import ipywidgets as widgets
    from IPython.display import display

    box = widgets.Text(
        value=text,
        description="Text:",
        continuous_update=False,  # predict on Enter or when the box loses focus, not on every key
        layout=widgets.Layout(width="80%"),
    )
    slider = widgets.IntSlider(value=top_k, min=1, max=max_k, description="Top k:", continuous_update=False)

    def show(text: str, top_k: int) -> None:
        try:
            results = predict_top_k_masked_word(text, model, tokenizer, top_k=top_k)
        except PredictionError as error:
            print(error)
            return
        display(candidates_figure(results, text))

    output = widgets.interactive_output(show, {"text": box, "top_k": slider})
    return widgets.VBox([box, slider, output])
