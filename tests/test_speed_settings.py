"""The training path's speed settings change how fast it runs, never what it computes."""

import contextlib
import json
import platform
import subprocess
import sys

import pytest
import torch
from transformers import BertForMaskedLM
from transformers.models.bert import modeling_bert

from mlm_helpers import hardware, onednn
from mlm_helpers.data.masking import MaskedLanguageModelingDataset, collate
from mlm_helpers.hardware import resolve_mixed_precision
from mlm_helpers.mlm_head import SparseMaskedLM
from mlm_helpers.training import cpu_settings
from mlm_helpers.training.distributed import make_accelerator
from mlm_helpers.training.loop import LoopHooks, TrainArgs, build_optimizer, build_schedule, train_loop
from mlm_helpers.training.run import train

from .conftest import sample_lines, tiny_bert
from .test_training import small_config


@pytest.mark.parametrize(("hardware_bf16", "expected"), [(True, "bf16"), (False, "no")])
def test_auto_precision_on_a_cpu_uses_bf16_only_where_the_hardware_has_it(
    monkeypatch, hardware_bf16, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: hardware_bf16)
    assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("bf16") == "bf16"


def test_the_fused_cpu_optimizer_steps_like_the_plain_one(tokenizer):
    examples = [tokenizer(t, truncation=True, max_length=24)["input_ids"] for t in sample_lines(32)]
    masked = list(MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.2, seed=4))
    batches = [collate(masked[i : i + 8], tokenizer.pad_token_id) for i in range(0, 32, 8)]

    def run(fused: bool):
        model = SparseMaskedLM(tiny_bert(len(tokenizer)))
        optimizer = build_optimizer(model, 1e-3, 0.01)
        assert optimizer.defaults["fused"] is True  # what the training path builds on a CPU
        if not fused:
            optimizer = torch.optim.AdamW(optimizer.param_groups, lr=1e-3, foreach=False)
        for batch in batches:
            model(**batch).backward()
            optimizer.step()
            optimizer.zero_grad()
        return model.state_dict()

    fused, plain = run(True), run(False)
    assert all(torch.allclose(fused[k], plain[k], atol=1e-6) for k in fused)
    start = tiny_bert(len(tokenizer)).state_dict()
    assert not torch.allclose(
        fused["model.bert.embeddings.word_embeddings.weight"], start["bert.embeddings.word_embeddings.weight"]
    )


def weights_after(tmp_path, text_file, name, **changes):
    train(small_config(tmp_path / name, text_file, max_steps=6, eval_every=0, **changes))
    return BertForMaskedLM.from_pretrained(tmp_path / name / "bert_finetuned").state_dict()


def test_gradient_checkpointing_recomputes_layers_and_trains_to_the_same_weights(
    tmp_path, text_file, monkeypatch
):
    # Count a module inside each layer: transformers checkpoints the layer's own forward.
    calls = []
    forward = modeling_bert.BertIntermediate.forward
    monkeypatch.setattr(
        modeling_bert.BertIntermediate, "forward", lambda self, x: calls.append(1) or forward(self, x)
    )
    plain = weights_after(tmp_path, text_file, "plain")
    plain_calls = len(calls)
    calls.clear()
    recomputed = weights_after(tmp_path, text_file, "recomputed", gradient_checkpointing=True)
    # the same evaluations, plus each training step's 2 layers run a second time in the backward pass
    assert len(calls) == plain_calls + 6 * 2
    assert all(torch.allclose(plain[k], recomputed[k], atol=1e-6) for k in plain)


def test_a_lone_cpu_run_adds_the_tied_embeddings_gradient_rows_in_place_to_the_same_weights(
    tmp_path, text_file, monkeypatch, tokenizer
):
    real, seen = cpu_settings.embedding_gradient_in_place, []

    @contextlib.contextmanager
    def recording(model, enabled):
        with real(model, enabled) as on:
            seen.append((on, len(model.get_input_embeddings()._forward_hooks)))
            yield on
        seen.append(len(model.get_input_embeddings()._forward_hooks))

    monkeypatch.setattr(cpu_settings, "embedding_gradient_in_place", recording)
    in_place = weights_after(tmp_path, text_file, "in_place")
    assert seen == [(True, 1), 0]  # on while training, and the model left as it was
    monkeypatch.setattr(
        cpu_settings, "embedding_gradient_in_place", lambda model, enabled: real(model, False)
    )
    dense = weights_after(tmp_path, text_file, "dense")
    assert all(torch.allclose(in_place[k], dense[k], atol=1e-6) for k in dense)
    # a weight of its own: left to autograd
    config = tiny_bert(len(tokenizer)).config
    config.tie_word_embeddings = False
    untied = BertForMaskedLM(config)
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    with real(untied, True) as on:
        assert not on and not untied.get_input_embeddings()._forward_hooks


@pytest.mark.skipif(not onednn.onednn_works(), reason="this torch build has no oneDNN inner product")
def test_a_lone_cpu_run_computes_its_linear_layers_on_onednn_to_the_same_weights_every_time(
    tmp_path, text_file, monkeypatch
):
    monkeypatch.setattr(onednn, "ONEDNN_FROM", 0)  # the tiny model's layers too
    real, seen = onednn.trainable_linear, []
    monkeypatch.setattr(onednn, "trainable_linear", lambda *args: seen.append(1) or real(*args))
    first, second = weights_after(tmp_path, text_file, "first"), weights_after(tmp_path, text_file, "second")
    assert seen and all(torch.equal(first[k], second[k]) for k in first)  # a run repeats itself
    calls = len(seen)
    monkeypatch.setattr(onednn, "ONEDNN_FROM", 2**62)  # no layer
    matmul = weights_after(tmp_path, text_file, "matmul")
    assert len(seen) == calls
    assert all(torch.allclose(first[k], matmul[k], atol=1e-5) for k in first)


def test_the_embeddings_rows_in_place_make_autograds_gradient_padding_and_accumulation_included(tokenizer):
    model = SparseMaskedLM(tiny_bert(len(tokenizer)))
    ids = torch.randint(5, len(tokenizer), (4, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 9:] = tokenizer.pad_token_id  # its embedding's row gets no gradient from the padding positions
    labels = torch.where(torch.rand(4, 12, generator=torch.Generator().manual_seed(1)) < 0.3, ids, -100)
    attention_mask = (ids != tokenizer.pad_token_id).long()
    weight = model.model.get_input_embeddings().weight

    def gradient(on: bool) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with cpu_settings.embedding_gradient_in_place(model.model, enabled=on) as used:
            assert used == on
            for _ in range(2):  # accumulated over two backward passes
                model(ids, attention_mask, labels).backward()
        return weight.grad.clone()

    in_place, autograd = gradient(True), gradient(False)
    assert torch.allclose(in_place, autograd, atol=1e-6)


HEAP_PROBE = """
import resource, torch
from mlm_helpers.hardware import heap_kept

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 8192), torch.nn.GELU(), torch.nn.Linear(8192, 16))
x = torch.randn(1024, 16)

def faults():  # of a training step: activations and gradients of 32 MiB, freed and made again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = [faults() for _ in range(3)]
with heap_kept() as on:
    kept = [faults() for _ in range(8)]
# The heap grows over the first steps, and now and then later, when freed blocks lie where the next
# tensors do not fit: steps after the first, on average.
print(on, min(default), sum(kept[1:]) / 7, max(faults() for _ in range(3)))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_kept_heap_hands_freed_memory_to_the_next_tensors_without_page_faults():
    # A process of its own: what glibc keeps depends on all that the process allocated before.
    printed = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, check=True)
    on, default, kept, after = printed.stdout.split()
    default, kept, after = int(default), float(kept), int(after)
    if default < 1000:
        pytest.skip(f"{default} page faults a step: huge pages for all memory, nothing to save")
    assert on == "True"
    # Seen on a 2-core AMD EPYC: 0 page faults in most steps, about 8,000 (a 32 MiB block) in one or two
    # of them, against about 33,000 in every step without the kept heap.
    assert kept < default / 4
    assert after > default / 2  # glibc's settings restored: memory mapped afresh again
    with hardware.heap_kept(enabled=False) as on:
        assert not on


def test_compiled_training_matches_eager(tmp_path, text_file):
    eager = weights_after(tmp_path, text_file, "eager")
    compiled = weights_after(tmp_path, text_file, "compiled", compile=True)
    assert all(torch.allclose(eager[k], compiled[k], atol=1e-4) for k in eager)


def test_log_records_carry_model_flops_and_their_share_of_the_peak(tokenizer):
    examples = [tokenizer(t, truncation=True, max_length=24)["input_ids"] for t in sample_lines(32)]
    masked = list(MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.2, seed=4))
    batches = iter([collate(masked[i : i + 8], tokenizer.pad_token_id) for i in range(0, 32, 8)])
    model = SparseMaskedLM(tiny_bert(len(tokenizer)))
    optimizer = build_optimizer(model, 1e-3, 0.01)
    records = []
    schedule = build_schedule(optimizer, 0, 4)
    args = TrainArgs(max_steps=4, log_every=2, progress=False, flops_per_token=3e8, peak_flops=1e11)
    train_loop(
        model, optimizer, schedule, batches, make_accelerator("no"), args, hooks=LoopHooks(records.append)
    )
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert record["model_tflops"] == pytest.approx(record["tokens_per_second"] * 3e8 / 1e12)
        assert record["mfu"] == pytest.approx(record["tokens_per_second"] * 3e8 / 1e11)
        json.dumps(record)  # written to metrics.jsonl as it is
