"""FLOPs per token, bf16 detection, matmul peaks and MFU (hardware.py, training/flops.py)."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM

from mlm_helpers.hardware import (
    cpu_supports_bf16,
    cpuinfo_has_bf16,
    known_peak_flops,
    measure_matmul_peak,
    peak_flops_for_name,
)
from mlm_helpers.mlm_head import SparseMaskedLM
from mlm_helpers.training.flops import mfu, training_flops_per_token


def small_config(**changes) -> BertConfig:
    values = dict(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                  intermediate_size=8, max_position_embeddings=16)  # fmt: skip
    return BertConfig(**{**values, **changes})


def test_flops_of_a_small_config_counted_by_hand():
    # Multiply-adds per token, forward: Q, K, V, O are 4x4 each (64), the feed-forward 4x8 and 8x4 (64);
    # over 3 tokens, the scores and the context take 3 keys x 4 dims each (24); the head's transform is
    # 4x4 (16) and its projection 4x10 (40). FLOPs = 2 per multiply-add, x3 for forward plus backward.
    encoder = 2 * 3 * (64 + 64 + 24)
    head = 2 * 3 * (16 + 40)
    assert training_flops_per_token(small_config(), seq_len=3, masked_fraction=None) == encoder + head
    assert training_flops_per_token(small_config(), seq_len=3, masked_fraction=0.5) == encoder + head / 2


@pytest.mark.parametrize("sparse", [False, True])
def test_flops_match_what_torch_counts_in_a_training_step(sparse):
    config = small_config(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32)  # fmt: skip
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    ids = torch.randint(5, 50, (2, 12))
    labels = ids.clone()
    if sparse:
        labels[:, ::3] = -100  # the head runs on 16 of the 24 tokens
    with FlopCounterMode(display=False) as counter:
        if sparse:
            loss = SparseMaskedLM(model)(ids, torch.ones_like(ids), labels)
        else:
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
    fraction = 16 / 24 if sparse else None
    expected = ids.numel() * training_flops_per_token(config, seq_len=12, masked_fraction=fraction)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)


def test_sparse_head_saves_exactly_the_heads_share():
    config = BertConfig()  # bert-base
    full = training_flops_per_token(config, 128, None)
    sparse = training_flops_per_token(config, 128, 0.15)
    head = 6 * (768 * 768 + 768 * 30522)
    assert full - sparse == pytest.approx(0.85 * head)
    assert training_flops_per_token(config, 128, 1.0) == full


def test_attention_flops_grow_linearly_with_the_sequence():
    config = BertConfig()
    added = training_flops_per_token(config, 512, None) - training_flops_per_token(config, 128, None)
    assert added == 12 * 12 * 768 * (512 - 128)  # 12 FLOPs per score and value, 12 layers, hidden 768


def test_mfu_is_model_flops_over_the_peak():
    assert mfu(tokens_per_second=1_000, flops_per_token=2e9, peak=4e12) == pytest.approx(0.5)


X86_FLAGS = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma avx512f{}\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (X86_FLAGS.format(""), False),  # AVX2 and AVX-512 alone emulate bf16
        (X86_FLAGS.format(" avx512_bf16 avx512vl"), True),
        (X86_FLAGS.format(" amx_tile amx_bf16"), True),
        (X86_FLAGS.format(" avx512_fp16"), False),
        ("processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n", True),  # Arm, e.g. Graviton3
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n", False),
        ("model name\t: bf16 avx512_bf16 marketing name\nflags\t\t: fpu sse2\n", False),
        ("", False),
    ],
)
def test_bf16_detection_reads_the_cpu_flags(cpuinfo, expected):
    assert cpuinfo_has_bf16(cpuinfo) is expected


def test_bf16_detection_is_read_once():
    first = cpu_supports_bf16()
    assert isinstance(first, bool)
    assert cpu_supports_bf16() is first
    assert cpu_supports_bf16.cache_info().hits >= 1


def test_matmul_peak_is_a_positive_finite_rate():
    flops = measure_matmul_peak(torch.float32, "cpu", size=32, seconds=0.01)
    assert flops > 0 and math.isfinite(flops)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA A10G", None),  # no datasheet: unknown rather than a guess
        ("Tesla T4", 65e12),
        ("Tesla V100-SXM2-16GB", 125e12),
        ("Tesla V100-PCIE-32GB", 112e12),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_gpu_peaks_are_looked_up_by_name(name, expected):
    assert peak_flops_for_name(name) == expected


def test_a_cpu_has_no_datasheet_peak():
    assert known_peak_flops("cpu") is None
