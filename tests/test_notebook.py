"""The walkthrough notebook: committed without outputs, and runs top to bottom in QUICK mode.

The run sets the notebook's own parameters the way papermill does (a cell inserted after the one tagged
`parameters`), in a temporary working directory, so nothing is written into the repository.
"""

import ast
import os
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO

NOTEBOOK = REPO / "bert_mlm_finetuning.ipynb"
# The parameters, which papermill must be able to set.
PARAMETERS = {
    "QUICK",
    "MODEL",
    "DATASET",
    "DATA_FILES",
    "MAX_STEPS",
    "NUM_EPOCHS",
    "BATCH_SIZE",
    "MAX_LENGTH",
    "MLM_PROBABILITY",
    "OUTPUT_DIR",
    "MODEL_DIR",
}
# The quick preset, cut to about a minute of training on two busy CPU cores.
TEST_PARAMETERS = {"QUICK": True, "MODEL": "scratch:tiny", "MAX_STEPS": 30, "BATCH_SIZE": 8, "MAX_LENGTH": 64}


def parameters_cell_index(notebook) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


def test_committed_without_outputs_or_execution_counts():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.id!r} was committed with outputs: strip them"
            assert cell.execution_count is None, f"cell {cell.id!r} was committed with an execution count"
    assert "widgets" not in notebook.metadata, "widget state was committed: strip it"
    # nbstripout also knows the metadata that editors add (execution times, collapsed cells...).
    strip = [sys.executable, "-m", "nbstripout", "--verify", "--keep-id", str(NOTEBOOK)]
    verified = subprocess.run(strip, capture_output=True, text=True)
    assert verified.returncode == 0, f"run `nbstripout --keep-id {NOTEBOOK.name}`: {verified.stdout}"


def test_parameters_cell_assigns_every_parameter():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = notebook.cells[parameters_cell_index(notebook)]
    tree = ast.parse(cell.source)
    assigned = {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets}
    assert assigned == PARAMETERS
    assert all(isinstance(node, ast.Assign) for node in tree.body), "parameters cell: assignments only"


def outputs_of(cell) -> dict[str, str]:
    """A cell's outputs by MIME type (streams as "stream"), texts of one type joined."""
    found: dict[str, list[str]] = {}
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            found.setdefault("stream", []).append(output.text)
        elif output.output_type == "error":
            found.setdefault("error", []).append(output.ename)
        else:
            for mime, data in output.get("data", {}).items():
                found.setdefault(mime, []).append(data if isinstance(data, str) else str(data))
    return {mime: "\n".join(texts) for mime, texts in found.items()}


def cell_calling(cells, snippet: str):
    """The one code cell whose source contains `snippet` (robust to cell ids and order)."""
    found = [cell for cell in cells if cell.cell_type == "code" and snippet in cell.source]
    assert len(found) == 1, f"{len(found)} code cells contain {snippet!r}"
    return found[0]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run in QUICK mode: (its cells, working directory). Fails on any cell error."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    injected = nbformat.v4.new_code_cell(
        "\n".join(f"{name} = {value!r}" for name, value in TEST_PARAMETERS.items()), id="injected-parameters"
    )
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(parameters_cell_index(notebook) + 1, injected)
    workdir = tmp_path_factory.mktemp("notebook_run")
    with pytest.MonkeyPatch.context() as patch:
        # The kernel inherits this environment: it imports mlm_helpers from the checkout, and stays offline.
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        client = NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        )
        client.execute()  # raises CellExecutionError, with the traceback, on the first failing cell
    return notebook.cells, workdir


def test_notebook_runs_and_writes_only_into_its_working_directory(executed):
    cells, workdir = executed
    assert all("error" not in outputs_of(cell) for cell in cells)
    assert (workdir / "bert_finetuned" / "model.safetensors").is_file()
    assert (workdir / "outputs" / "metrics.jsonl").is_file()
    assert "--max-steps 30" in outputs_of(cell_calling(cells, "cli_command("))["stream"]


def test_notebook_shows_plots_tables_and_predictions(executed):
    cells, _ = executed
    assert "image/png" in outputs_of(cell_calling(cells, "training_figure(")), "no training plot"
    assert "image/png" in outputs_of(cell_calling(cells, "top_k_figure(")), "no top-k bar chart"

    metrics = outputs_of(cell_calling(cells, 'metrics_table({"before"'))
    assert "text/html" in metrics
    for needle in ("before", "after", "loss", "perplexity", "top-1 accuracy", "top-5 accuracy",
                   "pseudo-perplexity"):  # fmt: skip
        assert needle in metrics["text/plain"], f"{needle!r} missing from the before/after table"

    predictions = outputs_of(cell_calling(cells, "predictions_by_model(EXAMPLE_SENTENCES, models"))[
        "text/plain"
    ]
    for sentence in ("The quick brown [MASK]", "I love to eat [MASK]", "The capital of France is [MASK]."):
        assert sentence in predictions
    assert "before" in predictions and "after" in predictions and "%" in predictions

    scores = outputs_of(cell_calling(cells, "scores_table(MY_SENTENCES, models)"))["text/plain"]
    assert "all sentences" in scores and "before" in scores and "after" in scores
    assert "Market the walked dog" in scores  # the user's own sentences, each with its figures

    widget = outputs_of(cell_calling(cells, "fill_mask_explorer("))
    assert "application/vnd.jupyter.widget-view+json" in widget
    reloaded = outputs_of(cell_calling(cells, "AutoModelForMaskedLM.from_pretrained("))
    assert "exactly as it did after training" in reloaded["stream"]
    masking = outputs_of(cell_calling(cells, "masking_summary("))["text/plain"]
    assert "80.0" in masking  # the rule's share of [MASK], next to the observed one
