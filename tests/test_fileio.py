"""Writing folders: nothing of the user's is replaced, a kill never leaves the path empty, modes follow
the umask, and one run at a time writes an output folder."""

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from mlm_helpers.config import ConfigError, make_config
from mlm_helpers.fileio import (
    MARK,
    FolderInUseError,
    check_replaceable,
    locked_folder,
    marked_files,
    recover,
    write_folder,
)
from mlm_helpers.modeling import load_model
from mlm_helpers.training.checkpoints import TrainingState, save_checkpoint
from mlm_helpers.training.outputs import save_model

from .conftest import REPO, tiny_bert
from .test_cli import assert_clean_error, run_in_process


def write_files(**files):
    def fill(folder):
        for name, text in files.items():
            (folder / name).write_text(text)

    return fill


def quick_train(tmp_path, *extra):
    return ("train", "--preset", "quick", "--max-steps", "2", "--eval-size", "20", "--no-progress",
            "--output-dir", str(tmp_path / "out"), *extra)  # fmt: skip


def test_a_folder_of_the_users_files_is_refused_before_training_and_left_alone(tmp_path, capsys):
    own = tmp_path / "thesis"
    own.mkdir()
    (own / "chapter1.txt").write_text("my only copy")
    result = run_in_process(capsys, *quick_train(tmp_path, "--model-dir", str(own)))
    assert_clean_error(result, f"--model-dir {own}", "did not write", "chapter1.txt")
    assert (own / "chapter1.txt").read_text() == "my only copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no output folder, nothing hidden

    existing_file = tmp_path / "notes.txt"
    existing_file.write_text("keep me")
    result = run_in_process(capsys, *quick_train(tmp_path, "--model-dir", str(existing_file)))
    assert_clean_error(result, "is a file, not a folder")
    assert existing_file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "thesis"]


def test_overlapping_model_and_output_folders_are_refused(tmp_path, capsys):
    for model_dir, output_dir in [("run", "run"), ("run/model", "run"), ("model", "model/out")]:
        with pytest.raises(ConfigError, match="overlap"):
            make_config("quick", model_dir=str(tmp_path / model_dir), output_dir=str(tmp_path / output_dir))
    result = run_in_process(capsys, "train", "--preset", "quick", "--output-dir", str(tmp_path / "o"),
                            "--model-dir", str(tmp_path / "o" / "model"))  # fmt: skip
    assert_clean_error(result, "overlap")
    assert not (tmp_path / "o").exists()


def test_an_output_dir_that_is_a_file_is_refused_before_the_model_is_built(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    result = run_in_process(capsys, *quick_train(tmp_path, "--model-dir", str(tmp_path / "m")))
    assert_clean_error(result, "--output-dir", "is a file")
    assert (tmp_path / "out").read_text() == "not a folder"
    assert not (tmp_path / "m").exists()


def test_only_a_folder_holding_nothing_but_what_we_wrote_is_replaced(tmp_path):
    target = tmp_path / "model"
    write_folder(target, write_files(**{"config.json": "1"}))
    assert marked_files(target) == {"config.json"} and (target / MARK).is_file()
    write_folder(target, write_files(**{"config.json": "2", "extra.json": "x"}))  # our own: replaced
    assert (target / "config.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old one and staging are gone

    (target / "my_notes.txt").write_text("mine")  # the user adds a file to the saved folder
    with pytest.raises(FolderInUseError, match="my_notes.txt"):
        write_folder(target, write_files(**{"config.json": "3"}))
    assert (target / "my_notes.txt").read_text() == "mine"
    assert (target / "config.json").read_text() == "2"

    empty = tmp_path / "empty"
    empty.mkdir()
    check_replaceable(empty)  # an empty folder holds nothing to lose
    with pytest.raises(FolderInUseError, match="did not write"):
        check_replaceable(tmp_path)  # a folder without our mark


def test_an_export_over_the_users_folder_is_refused(tmp_path, capsys):
    own = tmp_path / "serving"
    own.mkdir()
    (own / "app.py").write_text("print('hi')")
    result = run_in_process(capsys, "export", "--model", str(tmp_path / "missing"), "--output", str(own))
    assert_clean_error(result, "--output", "app.py")
    assert [p.name for p in own.iterdir()] == ["app.py"]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_saved_model_and_checkpoint_modes_follow_the_umask(tmp_path, tokenizer, mask):
    model = tiny_bert(len(tokenizer))
    previous = os.umask(mask)
    try:
        save_model(model, tokenizer, tmp_path / "model", "card")
        state = {k: v.clone() for k, v in model.state_dict().items()}
        training = TrainingState(4, {}, {}, 1, [{}], [{"cpu": torch.get_rng_state()}], {}, None, [])
        checkpoint = save_checkpoint(tmp_path / "checkpoints", training, state, {"state": {}})
    finally:
        os.umask(previous)
    for folder in (tmp_path / "model", checkpoint):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask, folder
        for path in folder.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


# A child that saves a model folder over and over, as the end of a run does, importing only fileio.
SAVER = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path
    from mlm_helpers.fileio import write_folder
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    version = 0
    def fill(folder):
        for path in source.iterdir():
            shutil.copyfile(path, folder / path.name)
        (folder / "version.txt").write_text(str(version))
    while True:
        version += 1
        write_folder(target, fill)
        print(version, flush=True)
    """
)


def test_a_sigkill_inside_the_model_save_always_leaves_a_loadable_model(tmp_path, tokenizer):
    source, target = tmp_path / "source", tmp_path / "model"
    tiny_bert(len(tokenizer)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    expected = load_file(source / "model.safetensors")
    rng = random.Random(20240601)
    versions = set()
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(source), str(target)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        child.stdout.readline()  # one save done: the model folder exists from here on
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # One complete model at the path, whatever the kill interrupted.
        assert marked_files(target) == {p.name for p in source.iterdir()} | {"version.txt"}
        model, _ = load_model(target)
        assert all(model.state_dict()[k].equal(v) for k, v in expected.items())
        versions.add((target / "version.txt").read_text())
    assert len(versions) > 1  # the kills fell after different saves
    write_folder(target, write_files(**{"config.json": "{}"}))  # the next save cleans up the leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "source"]


def test_a_write_cut_between_two_renames_is_put_back_by_the_next_one(tmp_path):
    # Where a file system cannot exchange two folders, the old one is renamed aside first: a kill
    # between the two renames leaves nothing at the path, and these two complete folders beside it.
    target = tmp_path / "model"
    for name, version in ((".model.retired-ab12", "old"), (".model.staging-ab12", "new")):
        write_folder(tmp_path / name, write_files(**{"version.txt": version}))
        time.sleep(0.01)  # the staging folder's mark is the newer one
    (tmp_path / ".model.staging-zz99").mkdir()  # a save killed while writing: no mark, incomplete
    recover(target)
    assert (target / "version.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_one_run_per_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    with locked_folder(out, "--output-dir"):
        result = run_in_process(capsys, *quick_train(tmp_path, "--model-dir", str(tmp_path / "m")))
        assert_clean_error(result, f"--output-dir {out} is in use by another run (process {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the second run wrote nothing
    assert not (tmp_path / "m").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mlm_helpers.fileio import locked_folder\n"
         "with locked_folder(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderInUseError, match=f"process {holder.pid} on "), locked_folder(out):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locked_folder(out):  # the kernel released it with the process
        assert (out / ".lock").read_text().startswith(f"process {os.getpid()} on ")


def test_checkpoints_written_between_the_choice_and_the_lock_stop_the_run(tmp_path):
    from contextlib import ExitStack

    from mlm_helpers.training.checkpoints import CheckpointError, complete_checkpoints
    from mlm_helpers.training.run import lock_output_dir

    cfg = make_config("quick", output_dir=str(tmp_path / "out"), model_dir=str(tmp_path / "model"))
    folder = tmp_path / "out" / "checkpoints"
    seen = complete_checkpoints(folder)  # none yet, as this run saw it
    training = TrainingState(3, {}, {}, 1, [{}], [{"cpu": torch.get_rng_state()}], {}, None, [])
    save_checkpoint(folder, training, {"w": torch.zeros(1)}, {"state": {}})  # another run, meanwhile
    with ExitStack() as held, pytest.raises(CheckpointError, match="Another run wrote checkpoints"):
        lock_output_dir(cfg, seen, held)
    with ExitStack() as held:  # what this run saw is what is there: it goes on
        lock_output_dir(cfg, complete_checkpoints(folder), held)
