"""Memory: what the log records, the progress bar, summary.json and the training figure show, and the
message an out-of-memory error becomes (the run's checkpoints left as they were)."""

import json

import pytest
import torch

from mlm_helpers.config import ConfigError
from mlm_helpers.hardware import is_out_of_memory, memory_gib, memory_report
from mlm_helpers.plots import training_figure
from mlm_helpers.training import run
from mlm_helpers.training.checkpoints import complete_checkpoints, verify
from mlm_helpers.training.loop import train_loop
from mlm_helpers.training.run import OutOfMemory, train

from .test_cli import run_in_process
from .test_resume import config

CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
    "1.06 GiB is free."
)
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"
)


def test_a_cpu_reports_the_resident_memory_of_the_process():
    before = memory_gib(torch.device("cpu"))
    held = torch.ones(64 << 20, dtype=torch.float32)  # 256 MiB, written so that it is resident
    after = memory_gib(torch.device("cpu"))
    assert 0 < before["memory_gib"] <= before["peak_memory_gib"]
    assert after["memory_gib"] - before["memory_gib"] > 0.2
    assert after["peak_memory_gib"] >= after["memory_gib"]
    del held


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cuda_peak_is_the_window_since_the_last_reading():
    device = torch.device("cuda")
    memory_gib(device)
    block = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    del block
    window = memory_gib(device)
    assert window["peak_memory_gib"] - window["memory_gib"] >= 0.25
    assert memory_gib(device)["peak_memory_gib"] == pytest.approx(window["memory_gib"], abs=0.01)


def test_out_of_memory_errors_are_told_from_others_and_their_request_is_read():
    assert is_out_of_memory(torch.OutOfMemoryError(CUDA_OOM))
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    cpu = torch.device("cpu")
    assert memory_report(cpu, torch.OutOfMemoryError(CUDA_OOM)).startswith("tried to allocate 2.00 GiB; ")
    assert "tried to allocate 1024.00 GiB; the machine has " in memory_report(cpu, RuntimeError(CPU_OOM))


def test_the_log_records_and_summary_carry_memory(tmp_path, local_model, text_file_module):
    train(config(tmp_path, local_model, text_file_module, max_steps=4))
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4]
    assert all(0.05 < r["memory_gib"] <= r["peak_memory_gib"] < 64 for r in steps)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["peak_memory_gib"] == max(r["peak_memory_gib"] for r in steps)
    assert summary["memory_measured"] == "the resident memory (RSS) of the process"
    figure = training_figure(records)
    assert len(figure.axes) == 4
    lines = {line.get_label(): line.get_xdata().tolist() for line in figure.axes[3].get_lines()}
    assert lines == {"peak": [2, 4], "at the log step": [2, 4]}


def failing_forward(error: BaseException, at_call: int):
    """A loop for `train(cfg, loop=...)`: `train_loop`, with the model's forward raising `error` in its
    `at_call`-th training pass."""

    def loop(module, *rest):
        calls = []

        def hook(*_):
            calls.append(1)
            if len(calls) == at_call:
                raise error

        module.register_forward_pre_hook(hook)
        return train_loop(module, *rest)

    return loop


def test_an_out_of_memory_error_says_what_to_change_and_leaves_the_checkpoint(
    tmp_path, local_model, text_file_module
):
    cfg = config(tmp_path, local_model, text_file_module, checkpoint_every=2, batch_size=4)
    with pytest.raises(OutOfMemory) as raised:
        train(cfg, loop=failing_forward(torch.OutOfMemoryError(CUDA_OOM), at_call=3))  # in step 3
    message = str(raised.value)
    assert isinstance(raised.value, ConfigError)  # the command line's exit 2, one line
    for fragment in ("Out of memory on cpu (tried to allocate 2.00 GiB; the machine has ",
                     "--batch-size 2 --gradient-accumulation-steps 2 for the 4 x 1 now",
                     "a smaller --max-length", "--gradient-checkpointing", "Nothing was saved",
                     "the last checkpoint, ", "step-00000002, is intact"):  # fmt: skip
        assert fragment in message
    checkpoints = complete_checkpoints(tmp_path / "out" / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-00000002"]
    assert verify(checkpoints[0]).step == 2
    assert not (tmp_path / "model").exists()


def test_the_command_line_turns_a_cpu_allocation_failure_into_one_message(
    tmp_path, local_model, text_file_module, monkeypatch, capsys
):
    monkeypatch.setattr(run, "train_loop", failing_forward(RuntimeError(CPU_OOM), at_call=1))
    flags = ["--model", str(local_model), "--data-files", str(text_file_module), "--max-length", "32",
             "--output-dir", str(tmp_path / "out"), "--model-dir", str(tmp_path / "model"),
             "--max-steps", "4", "--eval-size", "8", "--mixed-precision", "no", "--no-progress",
             "--gradient-checkpointing"]  # fmt: skip
    result = run_in_process(capsys, "train", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]  # after the model loader's progress bar
    assert message.startswith("error: Out of memory on cpu (tried to allocate 1024.00 GiB; the machine has ")
    assert "no checkpoint had been written" in message
    assert "--gradient-checkpointing" not in message  # it is on already
