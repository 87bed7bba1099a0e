"""Checkpoints and resuming: exact, verified, safe. Real training on a tiny local BERT (with dropout)."""

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedModel

from mlm_helpers.config import make_config
from mlm_helpers.fileio import WriteError
from mlm_helpers.training.checkpoints import (
    CheckpointError,
    check_compatible,
    check_data_files,
    complete_checkpoints,
    fingerprint_files,
    latest_checkpoint,
    verify,
)
from mlm_helpers.training.loop import train_loop
from mlm_helpers.training.outputs import MetricsLog
from mlm_helpers.training.run import train

from .conftest import REPO, tiny_bert


def config(tmp_path, local_model, text_file, **changes):
    values = dict(model=str(local_model), data_files=[str(text_file)], max_length=32, batch_size=4,
                  max_steps=12, learning_rate=1e-3, eval_size=20, eval_every=0, log_every=2,
                  shuffle_buffer=64, checkpoint_every=4, output_dir=str(tmp_path / "out"),
                  model_dir=str(tmp_path / "model"), progress=False, mixed_precision="no",
                  pseudo_perplexity=4)  # fmt: skip
    values.update(changes)
    return make_config(**values)


def final_state(output_dir):
    checkpoint = verify(complete_checkpoints(output_dir / "checkpoints")[0])
    weights = load_file(checkpoint.path / "model.safetensors")
    optimizer = torch.load(checkpoint.path / "optimizer.pt", weights_only=True)
    return checkpoint.step, weights, optimizer, checkpoint.trainer["data"]


def assert_identical(a, b):
    step_a, weights_a, optimizer_a, data_a = a
    step_b, weights_b, optimizer_b, data_b = b
    assert step_a == step_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    states_a, states_b = optimizer_a["state"], optimizer_b["state"]
    assert states_a.keys() == states_b.keys()
    for key in states_a:
        assert all(torch.equal(states_a[key][n], states_b[key][n]) for n in states_a[key])
    assert data_a == data_b  # the same examples consumed, to the row and the token


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, local_model, text_file_module):
    folder = tmp_path_factory.mktemp("uninterrupted")
    train(config(folder, local_model, text_file_module))
    return final_state(folder / "out")


def interrupt_at_batch(number):
    """A loop for `train(cfg, loop=...)`: `train_loop`, with Ctrl-C (KeyboardInterrupt) when it draws
    its `number`-th batch, in the middle of a step."""

    def loop(module, optimizer, schedule, batches, *rest):
        def drawn():
            for count, batch in enumerate(batches, start=1):
                if count == number:
                    raise KeyboardInterrupt
                yield batch

        return train_loop(module, optimizer, schedule, drawn(), *rest)

    return loop


def test_interrupted_runs_resume_bit_identically(tmp_path, local_model, text_file_module, uninterrupted):
    cfg = config(tmp_path, local_model, text_file_module)
    # batches: in step 1 of another folder, in step 7, then in step 9 (the resumed run's third)
    for stop_at, folder, said in (
        (1, "other", "nothing was saved: no step had been checkpointed"),
        (7, "out", "the last completed step was saved (.*step-00000006)"),
        (3, "out", "the last completed step was saved (.*step-00000008)"),
    ):
        with pytest.raises(KeyboardInterrupt, match=said):
            train(cfg.replace(output_dir=str(tmp_path / folder)), loop=interrupt_at_batch(stop_at))
    assert not complete_checkpoints(tmp_path / "other" / "checkpoints")
    steps = [p.name for p in complete_checkpoints(tmp_path / "out" / "checkpoints")]
    assert steps == ["step-00000008", "step-00000006"]  # Ctrl-C saved the last completed step
    train(cfg)
    assert_identical(final_state(tmp_path / "out"), uninterrupted)
    logged = [
        json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [s for s in logged if s] == sorted(s for s in logged if s)  # no step logged twice


@pytest.mark.parametrize("workers", [0, 2])
def test_a_whole_word_run_resumes_bit_identically(tmp_path, local_model, text_file_module, capsys, workers):
    # Whole-word masks are drawn per word, from ids that carry word marks through the stream's state.
    cfg = config(tmp_path, local_model, text_file_module, whole_word_masking=True, data_workers=workers,
                 max_steps=6, checkpoint_every=2)  # fmt: skip
    train(cfg.replace(output_dir=str(tmp_path / "whole")))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, loop=interrupt_at_batch(4))  # in step 4: Ctrl-C saves step 3, or with workers step 2
    capsys.readouterr()
    train(cfg)
    assert f"(step {2 if workers else 3} of 6)" in capsys.readouterr().out  # resumed, not started over
    assert_identical(final_state(tmp_path / "out"), final_state(tmp_path / "whole"))


@pytest.mark.parametrize("trial_seed", [20240601, 7])
def test_sigkill_at_random_moments_then_resume_is_bit_identical(
    tmp_path, local_model, text_file_module, uninterrupted, trial_seed
):
    """Real processes, killed with SIGKILL at seeded random moments (checkpoints every step, so
    many kills land inside a save); each resumes until the run completes."""
    rng = random.Random(trial_seed)
    args = ["--model", str(local_model), "--data-files", str(text_file_module), "--max-length", "32",
            "--batch-size", "4", "--max-steps", "12", "--learning-rate", "1e-3", "--eval-size", "20",
            "--eval-every", "0", "--log-every", "2", "--shuffle-buffer", "64", "--checkpoint-every", "1",
            "--output-dir", str(tmp_path / "out"), "--model-dir", str(tmp_path / "model"),
            "--no-progress", "--mixed-precision", "no"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    kills = 0
    for attempt in range(8):
        process = subprocess.Popen([sys.executable, "-m", "mlm_helpers", "train", *args], cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        # Wait until training has started (the first checkpoint of this attempt), then kill at random.
        deadline = time.monotonic() + 120
        before = {p.name for p in complete_checkpoints(tmp_path / "out" / "checkpoints")}
        while process.poll() is None and time.monotonic() < deadline:
            now = {p.name for p in complete_checkpoints(tmp_path / "out" / "checkpoints")}
            if now - before:
                break
            time.sleep(0.05)
        if attempt < 3 and process.poll() is None:
            time.sleep(rng.uniform(0.0, 0.8))
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            continue
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]
        break
    assert kills >= 1  # up to three; a late kill can leave too few steps for another
    assert len(complete_checkpoints(tmp_path / "out" / "checkpoints")) == 2  # older ones were dropped
    # checkpointing every step changes nothing in the run itself
    assert_identical(final_state(tmp_path / "out"), uninterrupted)


def test_damaged_checkpoints_are_detected_and_the_previous_one_is_used(
    tmp_path, local_model, text_file_module
):
    train(config(tmp_path, local_model, text_file_module, max_steps=8))
    newest, previous = complete_checkpoints(tmp_path / "out" / "checkpoints")
    assert newest.name.endswith("8") and previous.name.endswith("4")
    for damage in ("truncate", "flip"):
        weights = newest / "model.safetensors"
        original = weights.read_bytes()
        if damage == "truncate":
            weights.write_bytes(original[: len(original) // 2])
        else:
            flipped = bytearray(original)
            flipped[len(flipped) // 3] ^= 0x01
            weights.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="damaged"):
            verify(newest)
        with pytest.warns(UserWarning, match="damaged"):
            assert latest_checkpoint(tmp_path / "out" / "checkpoints").path == previous
        weights.write_bytes(original)
    (newest / "trainer.json").unlink()
    with pytest.raises(CheckpointError):
        verify(newest)


def test_a_changed_setting_is_refused_by_name(tmp_path, local_model, text_file_module):
    train(config(tmp_path, local_model, text_file_module, max_steps=4))
    with pytest.raises(CheckpointError, match="--batch-size was 4, now 8"):
        train(config(tmp_path, local_model, text_file_module, max_steps=8, batch_size=8))
    train(config(tmp_path, local_model, text_file_module, max_steps=6, batch_size=8, force_resume=True))


def test_a_resume_with_another_pseudo_perplexity_sample_is_refused_an_older_checkpoint_has_the_default():
    # The "before" figure in a checkpoint was measured on its run's first N held-out texts.
    current = make_config(pseudo_perplexity=8).to_dict()
    with pytest.raises(CheckpointError, match="--pseudo-perplexity was 32, now 8"):
        check_compatible({**current, "pseudo_perplexity": 32}, current)
    older = {k: v for k, v in current.items() if k != "pseudo_perplexity"}  # before the setting existed
    check_compatible(older, make_config().to_dict())
    with pytest.raises(CheckpointError, match="--pseudo-perplexity was 32, now 8"):
        check_compatible(older, current)


def test_a_resume_on_changed_data_is_refused_naming_the_file(tmp_path, local_model, text_file):
    cfg = config(tmp_path, local_model, text_file, max_steps=4)
    train(cfg)
    original = text_file.read_text()
    text_file.write_text("\n".join(reversed(original.splitlines())) + "\n")  # same path and size
    with pytest.raises(CheckpointError, match=f"data file {text_file} changed.*contents differ"):
        train(cfg.replace(max_steps=8))
    text_file.write_text("")  # truncated: refused for what it is, before the text is read
    with pytest.raises(CheckpointError, match=f"size was {len(original.encode()):,} bytes, now 0"):
        train(cfg.replace(max_steps=8))
    text_file.write_text(original)  # the same text again: it resumes
    train(cfg.replace(max_steps=6))
    assert latest_checkpoint(tmp_path / "out" / "checkpoints").step == 6


def test_a_large_data_file_is_judged_by_its_ends_and_its_date(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * (3 << 20))
    saved = fingerprint_files([str(path)])
    stamp = path.stat()
    with open(path, "r+b") as handle:  # a change in the middle, which the hashed ends do not see
        handle.seek(3 << 19)
        handle.write(b"b")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    with pytest.raises(CheckpointError, match="modified since"):
        check_data_files(saved, [str(path)])
    check_data_files(saved, [str(path)], force=True)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # the limit: same size, ends and date
    check_data_files(saved, [str(path)])


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EXPLOIT_MARKER']}",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(
    tmp_path, local_model, text_file_module, monkeypatch
):
    train(config(tmp_path, local_model, text_file_module, max_steps=4))
    marker = tmp_path / "exploited"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    newest = complete_checkpoints(tmp_path / "out" / "checkpoints")[0]
    (newest / "optimizer.pt").write_bytes(pickle.dumps({"state": Exploit()}))
    manifest = json.loads((newest / "manifest.json").read_text())
    digest = hashlib.sha256((newest / "optimizer.pt").read_bytes()).hexdigest()
    manifest["files"]["optimizer.pt"] = digest  # an attacker rewrites the manifest too
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="Refusing to load .*could run code") as refused:
        train(config(tmp_path, local_model, text_file_module, max_steps=8))
    assert not marker.exists()
    # PyTorch's own message goes on to say how to load it anyway; ours must not suggest that
    assert "weights_only" not in str(refused.value) and "still be loaded" not in str(refused.value)


STORAGE_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)
# How each writer reports a full disk: torch.save's files, safetensors' weights, torch's zip writer.
FULL_DISK = {
    "torch.save": ("save", 3, lambda: OSError(errno.ENOSPC, "No space left on device"), "No space left"),
    "safetensors": ("save_file", 2, lambda: SafetensorError(STORAGE_FULL), "No space left"),
    "zip writer": ("save", 3, lambda: RuntimeError("[enforce fail at inline_container.cc:664] . "
                                                   "PytorchStreamWriter failed writing file data/0: file "
                                                   "write failed"), "file write failed"),
}  # fmt: skip


@pytest.mark.parametrize("writer", FULL_DISK)
def test_a_failed_save_leaves_the_previous_checkpoint_intact(
    tmp_path, local_model, text_file_module, monkeypatch, writer
):
    import mlm_helpers.training.checkpoints as state_module

    name, failing_call, error, said = FULL_DISK[writer]
    owner = state_module.torch if name == "save" else state_module
    real_save = getattr(owner, name)
    calls = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == failing_call:  # a file of the second checkpoint: half written, then full disk
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise error()
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(owner, name, failing_save)
    with pytest.raises(CheckpointError, match=f"{said}.*step-00000004.*intact"):
        train(config(tmp_path, local_model, text_file_module, max_steps=12))
    checkpoints = tmp_path / "out" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-00000004"]  # no half-written folder left
    assert verify(checkpoints / "step-00000004").step == 4


def test_a_failed_model_save_keeps_the_old_model_and_says_how_to_finish(
    tmp_path, local_model, text_file_module, monkeypatch, capsys
):
    cfg = config(tmp_path, local_model, text_file_module, max_steps=4)
    train(cfg)
    saved = load_file(tmp_path / "model" / "model.safetensors")

    def full_disk(self, folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError(STORAGE_FULL)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    with pytest.raises(
        WriteError, match="save the model to .*No space left.*unchanged.*step-00000006.*again"
    ):
        train(cfg.replace(max_steps=6))
    monkeypatch.undo()
    kept = load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.equal(kept[name], saved[name]) for name in saved)  # the old model, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]  # no staging folder left
    capsys.readouterr()
    train(cfg.replace(max_steps=6))  # with space again: resumes at the last step, and saves
    assert "(step 6 of 6)" in capsys.readouterr().out
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert not all(torch.equal(after[name], saved[name]) for name in saved)


def test_a_half_written_metrics_line_does_not_stop_a_resume(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 2, "loss": 3.5}\n{"step": 4, "loss": 3.1}\n{"step": 6, "lo')
    assert [r["step"] for r in MetricsLog(log, keep_through_step=4).records] == [2, 4]
    assert log.read_text() == '{"step": 2, "loss": 3.5}\n{"step": 4, "loss": 3.1}\n'


def test_a_non_finite_loss_skips_the_step_and_changes_nothing(tokenizer):
    from mlm_helpers.data.masking import MaskedLanguageModelingDataset, collate
    from mlm_helpers.mlm_head import SparseMaskedLM
    from mlm_helpers.training.distributed import make_accelerator
    from mlm_helpers.training.loop import (
        NonFiniteError,
        TrainArgs,
        build_optimizer,
        build_schedule,
        train_loop,
    )

    from .conftest import sample_lines

    examples = [tokenizer(t, truncation=True, max_length=24)["input_ids"] for t in sample_lines(40)]
    masked = list(MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.2, seed=1))
    batches = [collate(masked[i : i + 4], tokenizer.pad_token_id) for i in range(0, 40, 4)]

    def run(batch_list, poison_call=None, steps=None):
        module = SparseMaskedLM(tiny_bert(len(tokenizer)))
        if poison_call is not None:
            calls = {"n": 0}

            def poison(_module, _inputs, output):
                calls["n"] += 1
                return output * float("nan") if calls["n"] == poison_call else output

            module.model.bert.embeddings.register_forward_hook(poison)
        optimizer = build_optimizer(module, 1e-3, 0.01)
        schedule = build_schedule(optimizer, 0, 1000)
        args = TrainArgs(max_steps=steps or len(batch_list), progress=False)
        skipped = train_loop(module, optimizer, schedule, iter(batch_list), make_accelerator("no"), args)
        return module, skipped, schedule

    poisoned, skipped, schedule = run(batches, poison_call=4)
    clean, _, clean_schedule = run(batches[:3] + batches[4:])
    assert skipped == 1
    assert all(torch.isfinite(p).all() for p in poisoned.parameters())
    assert all(torch.equal(a, b) for a, b in zip(poisoned.state_dict().values(), clean.state_dict().values()))
    assert schedule.get_last_lr() == clean_schedule.get_last_lr()
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        module = SparseMaskedLM(tiny_bert(len(tokenizer)))
        module.model.bert.embeddings.register_forward_hook(lambda m, i, o: o * float("nan"))
        optimizer = build_optimizer(module, 1e-3, 0.01)
        args = TrainArgs(max_steps=10, max_nonfinite_steps=3, progress=False)
        train_loop(
            module, optimizer, build_schedule(optimizer, 0, 10), iter(batches), make_accelerator("no"), args
        )


def test_a_model_folder_whose_pickle_would_run_code_is_refused(tmp_path, monkeypatch, tokenizer):
    """evaluate and predict load models through load_model: a malicious .bin never runs."""
    from transformers import BertConfig, BertForMaskedLM

    from mlm_helpers import ModelLoadError, load_model

    marker = tmp_path / "exploited"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    folder = tmp_path / "model"
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)  # fmt: skip
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # a whole folder, but for its weights
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": Exploit()}))
    with pytest.raises(ModelLoadError, match="Refusing to load"):
        load_model(folder)
    assert not marker.exists()


def test_a_checkpoint_from_another_format_or_process_count_is_refused_with_a_way_forward():
    from mlm_helpers.training.checkpoints import FORMAT, check_processes

    check_processes({"processes": 2, "format": FORMAT}, 2)
    for older in ({"processes": 1}, {}):  # format 1 (optimizer keyed by position), and before processes
        with pytest.raises(CheckpointError, match="older version.*--no-resume"):
            check_processes(older, 1)
    with pytest.raises(CheckpointError, match="written by 2 process.*this run has 4.*Launch 2"):
        check_processes({"processes": 2, "format": FORMAT}, 4)


def test_a_checkpoint_left_over_by_a_kill_during_clean_up_is_dropped_on_resume(
    tmp_path, local_model, text_file_module
):
    # A kill between a save and the clean-up after it leaves three complete checkpoints; when that save
    # was the last step's, the resumed run has nothing to train and never saves again.
    cfg = config(tmp_path, local_model, text_file_module, max_steps=8)
    train(cfg)
    folder = tmp_path / "out" / "checkpoints"
    newest, previous = complete_checkpoints(folder)
    shutil.copytree(previous, folder / "step-00000002")
    assert len(complete_checkpoints(folder)) == 3
    train(cfg)
    assert complete_checkpoints(folder) == [newest, previous]


def test_a_metrics_line_that_cannot_be_written_says_what_to_do(tmp_path, monkeypatch):
    import mlm_helpers.training.outputs as outputs

    log = MetricsLog(tmp_path / "metrics.jsonl")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "open", full_disk, raising=False)  # the module's own name for open
    with pytest.raises(
        WriteError, match="Could not add to .*metrics.jsonl.*No space left.*checkpoints are intact"
    ):
        log.append({"step": 2, "loss": 3.0})
