"""How long a run lasts and which model it keeps: epochs, the best model, early stopping, a time budget."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mlm_helpers.config import ConfigError, make_config, parse_duration
from mlm_helpers.data.examples import tokenize_texts
from mlm_helpers.training import session as session_module
from mlm_helpers.training.checkpoints import complete_checkpoints, verify
from mlm_helpers.training.loop import EvalMetrics, warmup_then_decay
from mlm_helpers.training.prepare import steps_for_epochs
from mlm_helpers.training.run import evaluate_config, train
from mlm_helpers.training.session import Session

from .test_resume import assert_identical, config, final_state, interrupt_at_batch


def records(output_dir, key):
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if key in record]


@pytest.fixture(scope="module")
def epochs_run(tmp_path_factory, local_model, text_file_module):
    folder = tmp_path_factory.mktemp("epochs")
    cfg = config(folder, local_model, text_file_module, max_steps=None, num_epochs=2, checkpoint_every=6)
    return cfg, train(cfg)


def test_epochs_count_the_examples_and_set_the_runs_steps(epochs_run, tokenizer, text_file_module, capsys):
    cfg, result = epochs_run
    lines = [line.strip() for line in text_file_module.read_text().splitlines() if line.strip()]
    held_out = set(lines[: cfg.eval_size])  # training reads every other text
    tokens = sum(len(ids) for ids in tokenize_texts([t for t in lines if t not in held_out], tokenizer))
    examples = tokens // (cfg.max_length - 2)  # packed blocks of [CLS] + 30 tokens + [SEP]
    per_epoch = examples // cfg.batch_size
    assert result.steps == 2 * per_epoch
    epochs = [(r["step"], r["epoch"]) for r in records(result.output_dir, "loss")]
    assert epochs and all(epoch == pytest.approx(step / per_epoch) for step, epoch in epochs)
    assert json.loads((result.output_dir / "summary.json").read_text())["steps"] == result.steps


def test_max_steps_ends_an_epochs_run_first_and_says_so(tmp_path, local_model, text_file_module, capsys):
    cfg = config(tmp_path, local_model, text_file_module, max_steps=5, num_epochs=3, checkpoint_every=0)
    assert train(cfg).steps == 5
    out = capsys.readouterr().out
    assert "3 epochs of " in out and ": 5 steps." in out
    assert "--max-steps 5 ended the run at epoch 0." in out


def test_an_epochs_run_resumed_mid_epoch_is_bit_identical(
    epochs_run, tmp_path, local_model, text_file_module
):
    cfg, _ = epochs_run
    resumed = cfg.replace(output_dir=str(tmp_path / "out"), model_dir=str(tmp_path / "model"))
    with pytest.raises(KeyboardInterrupt):  # in the second epoch (of 97 steps here)
        train(resumed, loop=interrupt_at_batch(121))
    assert [p.name for p in complete_checkpoints(tmp_path / "out" / "checkpoints")][0] == "step-00000120"
    train(resumed)
    assert_identical(final_state(tmp_path / "out"), final_state(epochs_run[1].output_dir))


def test_too_little_text_for_one_step_of_an_epoch_is_refused():
    cfg = make_config(num_epochs=1, batch_size=8, gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match="makes 20 examples, fewer than the 32 of one step"):
        steps_for_epochs(cfg, examples=20, world_size=2)
    assert steps_for_epochs(cfg, examples=100, world_size=2)[0] == 3


def test_a_rising_held_out_loss_stops_early_and_the_better_model_is_saved(
    tmp_path, local_model, text_file_module, capsys
):
    # A learning rate far too high: the held-out loss rises from the first evaluation on.
    cfg = config(tmp_path, local_model, text_file_module, max_steps=24, learning_rate=1.0, warmup_ratio=0.0,
                 eval_every=2, save_best=True, early_stopping_patience=3, checkpoint_every=4)  # fmt: skip
    result = train(cfg)
    evals = [(r["step"], r["eval_loss"]) for r in records(tmp_path / "out", "eval_loss")]
    assert [step for step, _ in evals] == [0, 2, 4, 6]  # stopped after 3 evaluations without improvement
    assert min(evals, key=lambda e: e[1])[0] == 0 and evals[-1][1] > evals[0][1]
    assert result.steps == 6 and result.best_step == 0 and "early stopping" in result.stop_reason
    assert "Stopped after step 6 of 24: early stopping" in capsys.readouterr().out

    saved = load_file(tmp_path / "model" / "model.safetensors")
    best = load_file(tmp_path / "out" / "best" / "model.safetensors")
    base = load_file(local_model / "model.safetensors")
    assert all(torch.equal(saved[k], best[k]) for k in best)
    assert all(torch.equal(saved[k], base[k]) for k in base)  # the best was the model before training
    assert result.after.loss == pytest.approx(evals[0][1])
    again = evaluate_config(cfg.replace(model=str(tmp_path / "model")))
    assert again.loss == pytest.approx(evals[0][1], rel=1e-6)
    # "after" is the best evaluation's, its pseudo-perplexity too, and the saved model scores it again
    first = records(tmp_path / "out", "eval_loss")[0]["eval_pseudo_perplexity"]
    assert result.after.pseudo_perplexity == result.before.pseudo_perplexity == first
    assert again.pseudo_perplexity == pytest.approx(first, rel=1e-6)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Saved: the model of step 0, the lowest held-out loss" in card and "Stopped early: early" in card
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["best_step"] == 0 and summary["after"]["loss"] == pytest.approx(evals[0][1])
    # The checkpoint holds the best evaluation and the count since, for a resumed run to keep.
    trainer = verify(complete_checkpoints(tmp_path / "out" / "checkpoints")[0]).trainer
    assert trainer["best"]["step"] == 0 and trainer["stale_evals"] == 2


def test_a_nan_evaluation_is_never_the_best(tmp_path, local_model, text_file_module, monkeypatch):
    real = Session.judge

    def judged(session, step, metrics):  # the held-out loss of step 2 comes out NaN
        loss = float("nan") if step == 2 else metrics.loss
        return real(session, step, EvalMetrics(**{**metrics.as_dict(), "loss": loss}))

    monkeypatch.setattr(Session, "judge", judged)
    cfg = config(tmp_path, local_model, text_file_module, max_steps=4, learning_rate=3e-3, eval_every=2,
                 save_best=True)  # fmt: skip
    result = train(cfg)
    assert result.best_step == 4  # the loss falls: step 4 beats step 0, and NaN beat nothing
    assert json.loads((tmp_path / "out" / "best" / "best.json").read_text())["step"] == 4


class Clock:
    """A stand-in for the session's `time`: each reading is `tick` seconds after the one before, so a
    run's training time is its number of steps times `tick`, however loaded the machine is."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def test_the_time_budget_ends_the_run_saved_and_evaluated(
    tmp_path, local_model, text_file_module, monkeypatch
):
    monkeypatch.setattr(session_module, "time", Clock(tick=0.125))  # one reading a step, and one to start
    cfg = config(tmp_path, local_model, text_file_module, max_steps=10_000, time_budget="1s")
    result = train(cfg)
    assert result.steps == 8 and "time budget (1s) was spent at step 8" in result.stop_reason
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert records(tmp_path / "out", "eval_loss")[-1]["step"] == result.steps


def test_a_time_budget_alone_sets_the_schedule_by_the_elapsed_share_of_it(
    tmp_path, local_model, text_file_module, capsys, monkeypatch
):
    monkeypatch.setattr(session_module, "time", Clock(tick=0.125))
    cfg = config(tmp_path, local_model, text_file_module, max_steps=None, time_budget="2s", log_every=1,
                 warmup_ratio=0.25, checkpoint_every=0)  # fmt: skip
    assert cfg.max_steps is None
    result = train(cfg)
    assert "as many steps as the time budget of 2s allows" in capsys.readouterr().out
    assert result.steps == 16 and "time budget (2s) was spent" in result.stop_reason
    # Step k's rate was set at the end of step k - 1, by the time counted up to then: its k - 2 steps
    # before, 0.125 s each. Up over the first 0.5 s, then down to 0 at 2 s.
    rates = [r["learning_rate"] for r in records(tmp_path / "out", "learning_rate")]
    spent = [max(k - 2, 0) * 0.125 for k in range(1, 17)]
    expected = [cfg.learning_rate * warmup_then_decay(seconds, 0.5, 2.0) for seconds in spent]
    assert rates == pytest.approx(expected, abs=1e-12)


def test_durations_and_the_settings_that_need_others():
    assert [parse_duration(t) for t in ("90m", "2h", "1h30m", "45s", "3600")] == [5400, 7200, 5400, 45, 3600]
    for bad in ("", "soon", "5x", "0"):
        with pytest.raises(ConfigError, match="--time-budget"):
            make_config(time_budget=bad)
    with pytest.raises(ConfigError, match="--early-stopping-patience counts evaluations"):
        make_config(early_stopping_patience=2, eval_every=0)
    with pytest.raises(ConfigError, match="--num-epochs must be positive"):
        make_config(num_epochs=0)
    with pytest.raises(ConfigError, match="--pseudo-perplexity cannot be negative, got -1"):
        make_config(pseudo_perplexity=-1)


def test_a_resumed_run_keeps_its_best_evaluation_and_its_patience(tmp_path, local_model, text_file_module):
    # As in the test above, the held-out loss rises from step 0 on: uninterrupted, the run stops at step 6.
    cfg = config(tmp_path, local_model, text_file_module, max_steps=24, learning_rate=1.0, warmup_ratio=0.0,
                 eval_every=2, save_best=True, early_stopping_patience=3, checkpoint_every=0)  # fmt: skip
    with pytest.raises(KeyboardInterrupt, match="step-00000005"):  # after the evaluations of steps 2 and 4
        train(cfg, loop=interrupt_at_batch(6))
    result = train(cfg)
    assert (
        result.steps == 6
        and result.best_step == 0
        and "3 evaluations without improvement" in result.stop_reason
    )
    saved = load_file(tmp_path / "model" / "model.safetensors")
    base = load_file(local_model / "model.safetensors")
    assert all(torch.equal(saved[k], base[k]) for k in base)
