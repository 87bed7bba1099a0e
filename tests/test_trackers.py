"""--report-to: the records of metrics.jsonl reach the experiment tracker at their steps (TensorBoard,
read back from its event files, offline), a resumed run continues the same one, and a tracker whose
package is missing is refused before anything is read."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlm_helpers.config import ConfigError
from mlm_helpers.training import distributed, run
from mlm_helpers.training.checkpoints import complete_checkpoints
from mlm_helpers.training.distributed import (
    TRACKER_PROJECT,
    end_trackers,
    make_accelerator,
    start_trackers,
    tracker_config,
)
from mlm_helpers.training.loop import train_loop
from mlm_helpers.training.run import train

from .test_cli import assert_clean_error, run_in_process
from .test_resume import config

KEYS = ("loss", "learning_rate", "grad_norm", "peak_memory_gib", "eval_loss", "eval_top1")


def logged(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def event_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (events an interrupted run logged past the
    step it resumed from are purged)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_as_metrics_jsonl(scalars: dict, records: list[dict]) -> None:
    for key in KEYS:
        expected = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        assert expected, key
        assert [step for step, _ in scalars[key]] == [step for step, _ in expected], key  # once each
        assert [value for _, value in scalars[key]] == pytest.approx([v for _, v in expected], rel=1e-6)


def crash_at_batch(number):
    """A loop for `train(cfg, loop=...)`: `train_loop`, with a crash when it draws its `number`-th batch."""

    def loop(module, optimizer, schedule, batches, *rest):
        def drawn():
            for count, batch in enumerate(batches, start=1):
                if count == number:
                    raise RuntimeError("the machine went away")
                yield batch

        return train_loop(module, optimizer, schedule, drawn(), *rest)

    return loop


def test_tensorboard_gets_each_record_at_its_step_and_a_resumed_run_continues_it(
    tmp_path, local_model, text_file_module
):
    cfg = config(tmp_path, local_model, text_file_module, report_to="tensorboard", eval_every=6)
    # Logged at steps 2, 4, 6, evaluated at 0 and 6, checkpointed at 4; the crash comes in step 7.
    with pytest.raises(RuntimeError, match="went away"):
        train(cfg, loop=crash_at_batch(7))
    runs = tmp_path / "out" / "runs"
    folder = runs / TRACKER_PROJECT
    first_id = (runs / "run_id").read_text()
    assert [s for s, _ in event_scalars(folder)["loss"]] == [2, 4, 6]  # closed and flushed on failure
    assert [p.name for p in complete_checkpoints(tmp_path / "out" / "checkpoints")] == ["step-00000004"]

    train(cfg)  # resumes from step 4: steps 5 and 6 again, then to 12
    records = logged(tmp_path / "out")
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8, 10, 12]
    scalars = event_scalars(folder)
    assert_same_as_metrics_jsonl(scalars, records)  # step 6 once, with the resumed run's values
    assert [s for s, _ in scalars["eval_loss"]] == [0, 6, 12]
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one folder, appended to
    assert (runs / "run_id").read_text() == first_id  # the same run for wandb


def test_a_run_that_starts_over_gets_a_new_tracker_id_and_a_resumed_one_keeps_it(tmp_path):
    accelerator = make_accelerator("no", "tensorboard", tmp_path)
    ids = []
    for resumed_step in (None, 4, None):
        accelerator.trackers.clear()
        start_trackers(accelerator, {"seed": 1}, tmp_path, "name", resumed_step)
        end_trackers(accelerator)
        ids.append((tmp_path / "runs" / "run_id").read_text())
    assert ids[0] == ids[1] != ids[2]


def test_hyperparameters_are_scalars_and_lists_become_strings():
    values = tracker_config(
        {"data_files": ["a.txt", "b.txt"], "seed": 3, "add_tokens": None, "compile": False}
    )
    assert values == {"data_files": "['a.txt', 'b.txt']", "seed": 3, "add_tokens": None, "compile": False}


def test_a_tracker_that_is_not_installed_is_refused_before_any_data_is_read(
    tmp_path, local_model, text_file_module, monkeypatch, capsys
):
    monkeypatch.setattr(distributed, "package_installed", lambda name: False)
    monkeypatch.setattr(run, "prepare", lambda *args: pytest.fail("the data was read"))
    cfg = config(tmp_path, local_model, text_file_module, report_to="wandb")
    with pytest.raises(ConfigError, match="--report-to wandb needs the wandb package.*pip install wandb"):
        train(cfg)
    assert not (tmp_path / "out").exists()
    result = run_in_process(capsys, "train", "--model", str(local_model), "--data-files",
                            str(text_file_module), "--output-dir", str(tmp_path / "cli"),
                            "--model-dir", str(tmp_path / "model"), "--report-to", "tensorboard")  # fmt: skip
    assert_clean_error(result, "pip install tensorboard")
    assert not (tmp_path / "cli").exists()
