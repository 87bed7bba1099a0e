"""benchmarks/gpu_check.sh and gpu_check.py's plumbing, on the CPU: --dry-run runs every part with tiny
sizes and writes the JSON a GPU run would, and one part's failure does not stop the others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_dry_run_writes_every_part_with_figures_or_an_error(gpu_check, tmp_path):
    # Through the shell script, as on a GPU machine, with this Python (which imports torch, so it is
    # used as it is) and nothing to install.
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "SKIP_INSTALL": "1"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| part | figure | value |" in done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert set(parts) == set(gpu_check.BUDGETS)
    for name, entry in parts.items():
        assert entry["figures"] or not entry["ok"], name
        # Only a loaded machine's slowness may stop a part here: any other error is a bug in it.
        assert entry["ok"] or entry["error"].startswith("PartTimeout"), entry.get("traceback")
    assert report["environment"]["smoke"] and report["environment"]["versions"]["torch"]
    if parts["train"]["ok"]:
        rows = parts["train"]["figures"]["rows"]
        assert [row["batch_size"] for row in rows] == [4, 8]
        assert all(row["tokens_per_second"] > 0 and row["mfu_measured_matmul"] > 0 for row in rows)
    if parts["data"]["ok"]:
        assert parts["data"]["figures"]["sequences_per_second_1_workers"] > 0
    if parts["cuda_tests"]["ok"]:  # found by their skipif, and skipped here
        assert parts["cuda_tests"]["figures"]["tests"]
        assert parts["cuda_tests"]["figures"].get("failed", 0) == 0
    if parts["quick_run"]["ok"]:
        assert parts["quick_run"]["figures"]["summary"]["steps"] == 3
        assert len(parts["quick_run"]["figures"]["reloaded_top_3"]) == 3
    # A CPU without a datasheet peak leaves the goal open.
    assert report["goal"]["met"] is None


@pytest.mark.skipif(shutil.which("nvidia-smi", path="/usr/bin:/bin") is not None, reason="a GPU driver")
def test_without_a_gpu_driver_the_script_stops_before_installing_anything(tmp_path):
    # PYTHON names no program: had the script gone on to look for torch or make a venv, it would have
    # failed there, with another message and status.
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "no-python")}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "gpu_check.sh: no NVIDIA driver here (nvidia-smi not found); --dry-run checks the plumbing on a CPU"
    ]


def test_a_failing_or_overrunning_part_keeps_what_it_measured_and_the_next_one_runs(gpu_check):
    def fails(figures):
        figures["measured"] = 1.0
        raise RuntimeError("out of memory")

    def overruns(figures):
        figures["started"] = True
        while True:
            pass

    def works(figures):
        figures["rate"] = 2.0

    results = gpu_check.run_parts({"fails": fails, "overruns": overruns, "works": works}, {"overruns": 0.2})
    assert not results["fails"]["ok"] and "RuntimeError: out of memory" in results["fails"]["error"]
    assert results["fails"]["figures"] == {"measured": 1.0}
    assert not results["overruns"]["ok"] and "PartTimeout" in results["overruns"]["error"]
    assert results["overruns"]["figures"] == {"started": True}
    assert results["works"] == {"ok": True, "figures": {"rate": 2.0}, "seconds": results["works"]["seconds"]}


def test_the_cuda_tests_are_found_by_their_skipif(gpu_check):
    ids = gpu_check.cuda_test_ids(BENCHMARKS.parent / "tests")
    assert "tests/test_predictor.py::test_on_a_gpu" in ids
    assert all("::test_" in test for test in ids)
