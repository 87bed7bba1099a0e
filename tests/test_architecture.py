"""The package's shape: imports run one way, from the core up, with no cycle, and no private names cross
modules. Read from the source (lazy imports inside functions included), so nothing is imported here."""

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "mlm_helpers"
CORE = {
    "config",
    "hub",
    "publish",
    "fileio",
    "hardware",
    "onednn",
    "families",
    "modeling",
    "scratch",
    "new_words",
    "mlm_head",
    "plots",
}
# What each layer may import, besides itself and the core.
MAY_IMPORT = {
    "data": set(),
    "predict": set(),
    "training": {"data", "predict"},
    "notebook": {"data", "training", "predict"},
    "flags": {"predict"},
    "cli": {"data", "training", "predict", "notebook", "flags"},
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, typing_only: bool = False) -> list[tuple[str, str]]:
    """(module, name) for every `from X import name` and `import X` in a file that runs (or, with
    `typing_only`, that only type checkers see: under `if TYPE_CHECKING:`), X made absolute."""
    current = module_name(path)
    package = current if path.name == "__init__.py" else current.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for_typing = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for statement in node.body
        for inner in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if (id(node) in for_typing) != typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, "") if submodule in MODULES else (base, alias.name))
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        if name == "mlm_helpers":  # the public API: it names everything, and nothing imports it
            continue
        graph[name] = {m for m, _ in imports_of(path) if m in MODULES and m != name}
    return graph


def test_no_import_cycles():
    graph, done, path = package_graph(), set(), []

    def visit(module):
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for target in graph.get(module, ()):
            visit(target)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_imports_run_from_the_core_up():
    wrong = []
    for module, targets in package_graph().items():
        here = layer(module)
        for target in targets:
            there = layer(target)
            if there == here or there in CORE:
                continue  # the same layer, or the core
            if here in CORE or there not in MAY_IMPORT[here]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong
    assert package_graph()["mlm_helpers.data.sources"]  # the walk sees relative imports


def test_figures_import_nothing_of_ours_and_tables_alone_import_pandas():
    plots = MODULES["mlm_helpers.plots"]
    assert not {m for m, _ in imports_of(plots) if m.startswith("mlm_helpers")}
    assert {m for m, _ in imports_of(plots, typing_only=True)} == {"mlm_helpers.predict.results"}
    for name, path in MODULES.items():
        heavy = {m.split(".")[0] for m, _ in imports_of(path)} & {"pandas", "ipywidgets", "IPython"}
        assert not heavy or name.startswith("mlm_helpers.notebook."), (name, heavy)


def test_no_private_name_crosses_a_module():
    files = [*MODULES.values(), *(REPO / "tests").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    crossing = [
        f"{path.relative_to(REPO)} imports {module}.{name}"
        for path in files
        for module, name in imports_of(path)
        if module.startswith("mlm_helpers") and name.startswith("_") and not name.startswith("__")
    ]
    assert not crossing, crossing


def test_the_prediction_api_and_the_command_line_import_no_training_stack():
    # The commands that train import it when they run: predict, score and --help start without it.
    code = (
        "import sys\nfrom mlm_helpers import Predictor, predict_top_k_masked_word\nimport mlm_helpers.cli\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'accelerate', 'datasets', 'pandas'}),"
        " 'torch.distributed.fsdp' in sys.modules, 'mlm_helpers.training' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["[]", "False", "False"], result.stderr
