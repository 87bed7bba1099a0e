"""Batches made ahead in DataLoader workers: disjoint streams, positions at checkpoints, exact resumes."""

import hashlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import BertForMaskedLM

from mlm_helpers.data.batches import CheckpointSchedule
from mlm_helpers.training.prepare import prepare
from mlm_helpers.training.run import train

from .test_resume import interrupt_at_batch
from .test_training import small_config


@given(st.integers(0, 7), st.integers(1, 30), st.integers(1, 4), st.integers(1, 5))
def test_each_stream_reports_its_position_at_its_last_batch_before_every_checkpoint(
    every, last, accumulation, streams
):
    checkpoints = CheckpointSchedule(every, last, accumulation)
    expected = (
        set()
    )  # batch g comes from stream g % streams; a checkpoint step k ends with batch k*accumulation - 1
    for step in range(1, last + 1):
        if (every and step % every == 0) or step == last:
            end = step * accumulation - 1
            expected |= {g for g in range(max(end - streams + 1, 0), end + 1)}
    reported = {g for g in range(last * accumulation + streams) if checkpoints.last_before(g, streams)}
    assert reported == expected


def fingerprint(ids: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> str:
    original = torch.where(labels != -100, labels, ids)[keep.bool()]
    return hashlib.sha1(original.numpy().tobytes()).hexdigest()


def test_two_workers_take_turns_on_disjoint_streams(tmp_path, text_file):
    cfg = small_config(
        tmp_path, text_file, data_workers=2, packing="sentence", checkpoint_every=2, max_steps=8
    )
    batches = prepare(cfg).loader
    seen = {0: set(), 1: set()}
    for turn in range(8):
        assert batches.next == turn % 2
        batch = next(batches)
        rows = zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True)
        seen[turn % 2] |= {fingerprint(*row) for row in rows}
        if turn % 2:  # steps 2, 4, 6, 8 end here: both streams' positions are those after this step
            assert [state["position"] for state in batches.state_dict()["streams"]] == [(turn + 1) * 4] * 2
    assert len(seen[0]) == len(seen[1]) == 4 * 8
    assert not seen[0] & seen[1]


@pytest.mark.parametrize(("accumulation", "every", "stop"), [(1, 3, 5), (3, 1, 5)])
def test_a_run_with_workers_resumes_bit_identically(tmp_path, text_file, capsys, accumulation, every, stop):
    # (1, 3): resumed after 3 batches, so the second stream has the next turn; (3, 1): after step 1.
    def final_weights(folder):
        return BertForMaskedLM.from_pretrained(tmp_path / folder / "bert_finetuned").state_dict()

    settings = dict(data_workers=2, max_steps=6, checkpoint_every=every, eval_every=0,
                    gradient_accumulation_steps=accumulation)  # fmt: skip
    train(small_config(tmp_path / "whole", text_file, **settings))
    cfg = small_config(tmp_path / "parts", text_file, **settings)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, loop=interrupt_at_batch(stop))
    capsys.readouterr()
    assert train(cfg).steps == 6
    saved_step = (stop - 1) // accumulation // every * every
    assert f"(step {saved_step} of 6)" in capsys.readouterr().out  # resumed, not started over
    whole, parts = final_weights("whole"), final_weights("parts")
    assert all(torch.equal(whole[name], parts[name]) for name in whole)
