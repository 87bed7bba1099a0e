"""How fast training could go: model FLOPs per token, hardware peaks, and their ratio (MFU).

Model-FLOPs utilisation (MFU, PaLM paper, Chowdhery et al. 2022, appendix B) is the share of a chip's
peak that the model's own arithmetic uses: tokens per second x FLOPs per token / peak FLOP/s. Work the
recipe wastes - padding, recomputation - does not count, which makes recipes comparable.

>>> from transformers import BertConfig
>>> per_token = training_flops_per_token(BertConfig(), seq_len=128, masked_fraction=0.15)
>>> mfu(tokens_per_second=1_000, flops_per_token=per_token, peak=100e9)  # doctest: +ELLIPSIS
5.45...
"""

from __future__ import annotations

import functools
import math
import platform
import re
import time
from pathlib import Path

import torch
from transformers import BertConfig

# Training costs three matmul passes per weight: the forward one, and in the backward pass one for the
# input's gradient and one for the weight's (Kaplan et al. 2020, "Scaling Laws", section 2.1). Each pass
# is 2 FLOPs (a multiply and an add) per weight per token.
TRAINING_FLOPS_PER_WEIGHT = 6
# /proc/cpuinfo flags of hardware bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 extension.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def training_flops_per_token(config: BertConfig, seq_len: int, masked_fraction: float | None) -> float:
    """Matmul FLOPs of one training step (forward and backward), per token of a `seq_len`-token block.

    Counted: the weight matrices of every encoder layer (query, key, value, attention output, the two
    feed-forward layers), the attention scores (QK^T) and the attention-weighted values, and the MLM head
    (its transform dense layer and the vocabulary projection). Not counted: embedding lookups (no
    matmul), biases, LayerNorm, softmax, GELU and the loss, a few percent of the total at BERT's sizes.
    The head runs on every token when `masked_fraction` is None (the full head), else on that share of
    the tokens only (the sparse head of `SparseMaskedLM`).

    >>> training_flops_per_token(BertConfig(), 512, None) / 1e9  # doctest: +ELLIPSIS
    0.71...
    """
    hidden, layers = config.hidden_size, config.num_hidden_layers
    per_layer_weights = 4 * hidden * hidden + 2 * hidden * config.intermediate_size
    # Each token's query meets `seq_len` keys, and its output mixes `seq_len` values: 2 matmuls of
    # seq_len x hidden multiply-adds, with no weights of their own (bidirectional: no causal halving).
    per_layer_attention = 2 * seq_len * hidden
    head_weights = hidden * hidden + hidden * config.vocab_size
    head_share = 1.0 if masked_fraction is None else masked_fraction
    weights = layers * (per_layer_weights + per_layer_attention) + head_share * head_weights
    return float(TRAINING_FLOPS_PER_WEIGHT * weights)


def mfu(tokens_per_second: float, flops_per_token: float, peak: float) -> float:
    """Model-FLOPs utilisation: the share of `peak` FLOP/s that the model's arithmetic uses.

    >>> mfu(tokens_per_second=2_000, flops_per_token=5e8, peak=1e13)
    0.1
    """
    return tokens_per_second * flops_per_token / peak


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """Whether a Linux /proc/cpuinfo text lists hardware bf16 arithmetic.

    x86: AVX512-BF16 or AMX-BF16 in "flags"; Arm: "bf16" (the BFDOT/BFMMLA instructions) in "Features".
    Without them bf16 is emulated in fp32 and runs several times slower than fp32 itself.

    >>> cpuinfo_has_bf16("flags\\t\\t: fpu sse2 avx2 avx512_bf16")
    True
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and BF16_FLAGS & set(value.split()):
            return True
    return False


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True only where this machine's CPU has hardware bf16: x86 AVX512-BF16 or AMX as torch detects
    them (on any system), or on Linux the flags of /proc/cpuinfo (which also tell of Arm's BF16).

    Where neither can tell, the answer is False: a wrong True would pick a precision that trains
    several times slower, a wrong False only forgoes a gain.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the fallback
    if any(getattr(torch.cpu, name, lambda: False)() for name in checks):
        return True
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return False
    return cpuinfo_has_bf16(cpuinfo.read_text(errors="replace"))


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively (and so faster than in float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def measure_matmul_peak(
    dtype: torch.dtype, device: torch.device | str, size: int | None = None, seconds: float = 1.0
) -> float:
    """FLOP/s of the fastest square `size` x `size` matmul in `dtype` on `device`, of those run in about
    `seconds`.

    A large matmul is the best case for this chip and library, so it is the practical ceiling for
    training, which is mostly matmuls. Each product is timed on its own and the fastest counts: on a
    shared machine an average takes in whatever else ran meanwhile (two 1-second averages on our
    virtual machine gave 82 and 125 GFLOP/s). `size` defaults to 8192 on CUDA and 2048 elsewhere (one
    fp32 product of 2048 takes about 0.2 s on a laptop-class CPU). Runs after two untimed warm-up
    products.

    >>> measure_matmul_peak(torch.float32, "cpu", size=64, seconds=0.01) > 0
    True
    """
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    for _ in range(2):
        torch.matmul(a, b)
    synchronize(device)
    fastest, started = math.inf, time.perf_counter()
    while fastest == math.inf or time.perf_counter() - started < seconds:
        began = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)  # once per product: cheap next to it, and the clock reads finished work
        fastest = min(fastest, time.perf_counter() - began)
    return 2 * size**3 / fastest


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock reads finished work (a no-op on CPUs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Dense (no structured sparsity) 16-bit tensor-core peaks, FLOP/s: bf16 with fp32 accumulation, or fp16
# on GPUs without bf16 (V100, T4). From NVIDIA's datasheets, whose headline figures are the sparse ones,
# twice these: "NVIDIA H100 / H200 Tensor Core GPU" (BF16 1,979 / 1,671 / 1,513 TFLOPS with sparsity for
# SXM / NVL / PCIe), A100 (624 sparse), L40S (733 sparse), L40 (362 sparse), L4 (242 sparse), A10 (250
# sparse), T4 (65, fp16 mixed precision), V100 (125 SXM2, 112 PCIe, 130 V100S). The A10G, a cloud-only
# variant, has no NVIDIA datasheet and is left out. Patterns match torch.cuda.get_device_name(), e.g.
# "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"; the first match wins, so variants come first.
GPU_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"H(100|200)\b.*\bNVL\b", 835e12),
    (r"H100\b.*\bPCIe\b", 756e12),
    (r"H(100|200)\b", 989e12),  # also the GH200
    (r"A100\b", 312e12),
    (r"L40S\b", 362e12),
    (r"\bL40\b", 181e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
    (r"\bT4\b", 65e12),
    (r"V100S\b", 130e12),
    (r"V100\b.*\bPCIE\b", 112e12),
    (r"V100\b", 125e12),
)


def peak_flops_for_name(name: str) -> float | None:
    """The datasheet dense 16-bit peak of a GPU by its name, or None when the name is not in the table.

    >>> peak_flops_for_name("NVIDIA H200")
    989000000000000.0
    """
    for pattern, flops in GPU_PEAK_FLOPS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return flops
    return None


def known_peak_flops(device: torch.device | str) -> float | None:
    """The datasheet dense bf16 (or fp16) peak of a CUDA device; None for CPUs and unknown GPUs."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))
