"""Tables, figures and widgets for the notebook: the only modules that import pandas and ipywidgets."""
