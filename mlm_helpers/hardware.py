"""The machine: which device to use, which precision it computes fast in, and how fast it can go.

Device choice (CUDA, then MPS, then the CPU), the mixed-precision choice behind --mixed-precision auto,
hardware bf16 detection on CPUs, the measured matmul peak and the datasheet peaks of GPUs (what MFU is
measured against, in training/flops.py), waiting for a device's queued work, how much memory a run
holds (what the log records, and what an out-of-memory message reports), and the C heap kept while a
CPU trains.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import re
import time
from collections.abc import Iterator
from pathlib import Path

import torch

# /proc/cpuinfo flags of hardware bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 extension.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


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


def matmul_rates(
    dtype: torch.dtype, device: torch.device | str, size: int | None = None, seconds: float = 1.0
) -> list[float]:
    """FLOP/s of each square `size` x `size` matmul in `dtype` on `device`, one product after another
    for about `seconds` (at least one), after two untimed warm-up products. `size` defaults to 8192 on
    CUDA and 2048 elsewhere (one fp32 product of 2048 takes about 0.2 s on a laptop-class CPU).

    >>> len(matmul_rates(torch.float32, "cpu", size=64, seconds=0.01)) >= 1
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
    rates: list[float] = []
    started = time.perf_counter()
    while not rates or time.perf_counter() - started < seconds:
        began = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)  # once per product: cheap next to it, and the clock reads finished work
        rates.append(2 * size**3 / (time.perf_counter() - began))
    return rates


def measure_matmul_peak(
    dtype: torch.dtype, device: torch.device | str, size: int | None = None, seconds: float = 1.0
) -> float:
    """FLOP/s of the fastest of the products `matmul_rates` runs.

    A large matmul is the best case for this chip and library, so it is the practical ceiling for
    training, which is mostly matmuls. The fastest product counts: on a shared machine an average
    takes in whatever else ran meanwhile (two 1-second averages on our virtual machine gave 82 and 125
    GFLOP/s).

    >>> measure_matmul_peak(torch.float32, "cpu", size=64, seconds=0.01) > 0
    True
    """
    return max(matmul_rates(dtype, device, size, seconds))


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


def best_device() -> torch.device:
    """CUDA, then Apple's MPS, then the CPU: the order Accelerate picks them in for training."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_mixed_precision(choice: str) -> str:
    """'auto' -> bf16 on GPUs that support it, fp16 on other CUDA GPUs, bf16 on CPUs with bf16 in
    hardware (AVX512-BF16, AMX), else none. A CPU without it emulates bf16 and runs slower than fp32:
    6x slower for a bf16 matmul than fp32 on our AVX2-only EPYC (17 against 100 GFLOP/s)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if torch.backends.mps.is_available():
        return "no"
    return "bf16" if cpu_supports_bf16() else "no"


GIB = 1 << 30


def reset_peak_memory(device: torch.device) -> None:
    """Start a new window for `memory_gib`'s peak (CUDA only: a CPU's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_gib(device: torch.device) -> dict[str, float]:
    """This process's memory in GiB, for a log record: ``memory_gib`` now and ``peak_memory_gib``.

    On CUDA, the memory allocated by tensors and its peak since the last call (or `reset_peak_memory`),
    which starts the next window; on MPS, the allocated memory (it has no peak counter); on a CPU, the
    process's resident memory (RSS) and its peak since the process started. Host-side counters only:
    nothing waits for the device. Empty where the system tells neither (a CPU on Windows).
    """
    if device.type == "cuda":
        current, peak = torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
        reset_peak_memory(device)
    elif device.type == "mps":
        current = peak = torch.mps.current_allocated_memory()
    else:
        current, peak = resident_bytes(), peak_resident_bytes()
        if current is None or peak is None:
            return {}
    return {"memory_gib": current / GIB, "peak_memory_gib": max(peak, current) / GIB}


def memory_measured(device: torch.device) -> str:
    """What `memory_gib` measures on `device`, in words (for summary.json)."""
    if device.type in ("cuda", "mps"):
        return f"memory allocated by PyTorch tensors on {device.type}"
    return "the resident memory (RSS) of the process"


def resident_bytes() -> int | None:
    """The process's resident memory now, from /proc/self/statm (Linux); None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int | None:
    """The process's peak resident memory since it started (Linux, macOS); None elsewhere."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024  # bytes on macOS, KiB on Linux


# glibc's mallopt parameters and the defaults it starts with (malloc/malloc.c).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


@contextlib.contextmanager
def heap_kept(enabled: bool = True) -> Iterator[bool]:
    """Within the block, the C allocator (glibc's, on Linux) keeps the memory that freed tensors held and
    gives it to the next ones, instead of handing it back to the system and faulting fresh zeroed pages in
    again. A training step on a CPU frees and reallocates the same large buffers every time (activations,
    gradients, the vocabulary-sized projection's gradient of 94 MB for bert-base): with glibc's defaults
    each step of bert-base on 2 cores took 50,000 to 190,000 page faults and 0.3 to 1 s of system time,
    and none with the heap kept, its peak memory within 3%. On leaving, glibc's default settings are
    restored and the kept memory is handed back. Elsewhere (macOS, Windows, musl) it does nothing.
    Yields whether it is on."""
    libc = _glibc() if enabled else None
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, 0)  # large blocks from the heap, where freed ones are reused
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # nor the heap's freed top (up to 2 GiB) handed back
    try:
        yield libc is not None
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a device running out of memory: CUDA's OutOfMemoryError, or the RuntimeError
    of the CPU's or MPS's allocator."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError)
        and ("DefaultCPUAllocator: can't allocate memory" in text or "MPS backend out of memory" in text)
    )


def memory_report(device: torch.device, error: BaseException) -> str:
    """The numbers of an out-of-memory `error` on `device`, in words: what was asked for (from the
    error's own message) and what the device has and this process holds, where they are known.

    >>> memory_report(torch.device("cpu"), RuntimeError("you tried to allocate 1073741824 bytes."))[:31]
    'tried to allocate 1.00 GiB; the'
    """
    parts = []
    asked = re.search(r"tried to allocate (\d+(?:\.\d+)? [KMGT]iB|\d+ bytes)", str(error), re.IGNORECASE)
    if asked:
        amount = asked.group(1)
        parts.append(
            f"tried to allocate {int(amount.split()[0]) / GIB:.2f} GiB" if amount.endswith("bytes")
            else f"tried to allocate {amount}"
        )  # fmt: skip
    held = memory_gib(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        parts.append(
            f"the GPU has {total / GIB:.1f} GiB, {free / GIB:.2f} GiB of it free; this process's tensors "
            f"held {held['memory_gib']:.2f} GiB ({held['peak_memory_gib']:.2f} GiB at the peak)"
        )
    elif held:
        total = system_memory_bytes() if device.type == "cpu" else None
        has = f"the machine has {total / GIB:.1f} GiB; " if total else ""
        parts.append(
            f"{has}this process held {held['memory_gib']:.2f} GiB ({held['peak_memory_gib']:.2f} GiB at "
            "the peak)"
        )
    return "; ".join(parts) or "no figures are known"


def system_memory_bytes() -> int | None:
    """The machine's physical memory (Linux, macOS); None where the system does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
