"""ONNX export of a masked-LM, and an ONNX Runtime backend for `Predictor`: the production path.

`export_onnx` writes a folder that `Predictor.load` recognises by its model.onnx: the graph of
`MaskedLogits` (input_ids, attention_mask, positions -> logits at those positions only), beside the
model's config.json and tokenizer. Batch size, length and number of masks stay dynamic. Every export is
run once in ONNX Runtime and compared with PyTorch before it is kept: an exporter that traces a shape
into the graph gives wrong answers silently (the TorchScript exporter does, for BERT's attention mask).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..families import position_limit
from ..fileio import write_folder
from ..modeling import ModelLoadError, check_tokenizer_files
from .inputs import PredictionError
from .torch_backend import MaskedLogits

ONNX_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "positions")
INSTALL = "pip install onnx onnxscript onnxruntime (or: pip install -e .[onnx])"


@dataclass(frozen=True)
class ExportResult:
    """Where an export went, and how far its logits were from PyTorch's on a check batch."""

    folder: Path
    max_difference: float
    quantized: bool


def export_onnx(
    model,
    tokenizer,
    output_dir: str | Path,
    *,
    quantize: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> ExportResult:
    """Export `model` (moved to the CPU, in eval mode) to `output_dir`, check it, and save the tokenizer.

    The float32 graph must match PyTorch within `rtol`/`atol` or nothing is written. `quantize` then
    stores the weights of its matrix products in int8 (ONNX Runtime's dynamic quantization): about twice
    as fast on a CPU, but the probabilities move (by a few percent) and close candidates can swap places.

    >>> export_onnx(model, tokenizer, "bert_onnx").max_difference < 1e-4
    True
    >>> Predictor.load("bert_onnx").predict("The capital of France is [MASK].")
    """
    require_modules("onnx", "onnxscript", "onnxruntime")
    module = MaskedLogits(model.cpu().eval())
    differences = []

    def fill(folder: Path) -> None:
        _export_graph(module, folder / ONNX_FILE)
        model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        difference = _max_difference(module, folder)
        if not difference <= atol + rtol * _largest_logit(module):
            raise PredictionError(
                f"The exported graph disagrees with PyTorch by up to {difference:.3g}: this model cannot "
                "be exported faithfully; use the PyTorch backend."
            )
        if quantize:
            quantize_weights(folder / ONNX_FILE)
            difference = _max_difference(module, folder)
        differences.append(difference)

    target = write_folder(output_dir, fill, what="--output")
    return ExportResult(target, differences[0], quantize)


def _export_graph(module: MaskedLogits, path: Path) -> None:
    """The dynamo exporter, with batch, length and mask count dynamic."""
    example = _probe(module.model.config.vocab_size, batch=2, length=8, seed=0)
    batch, length, masks = (torch.export.Dim(name) for name in ("batch", "length", "masks"))
    dims = {
        "input_ids": {0: batch, 1: length},
        "attention_mask": {0: batch, 1: length},
        "positions": {0: masks},
    }
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    # The exporter narrates each stage on stdout and warns about its internals: keep output clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            path,
            input_names=list(INPUTS),
            output_names=["logits"],
            dynamic_shapes=dims,
            dynamo=True,
            external_data=size > 2**30,  # protobuf files stop at 2 GB
            verbose=False,
        )


def _check_batch(module: MaskedLogits) -> tuple[torch.Tensor, ...]:
    return _probe(module.model.config.vocab_size, batch=3, length=13, seed=1)  # shapes unlike the example


def _largest_logit(module: MaskedLogits) -> float:
    with torch.inference_mode():
        return float(module(*_check_batch(module)).abs().max())


def _max_difference(module: MaskedLogits, folder: Path) -> float:
    check = _check_batch(module)
    with torch.inference_mode():
        expected = module(*check)
    return float((OnnxBackend(folder).logits(*check) - expected).abs().max())


def quantize_weights(path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_name("quantized.onnx")
    with contextlib.redirect_stdout(io.StringIO()), _quiet("root"):
        # reduce_range: 7-bit weights, so that CPUs without VNNI (AVX2 only) cannot saturate.
        quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    os.replace(quantized, path)


def _probe(vocab_size: int, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A padded batch of random ids with two masked positions per row, as `MaskedLogits` takes them."""
    ids = torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    attention = torch.ones_like(ids)
    attention[-1, length // 2 :] = 0  # the last row is padded, as in a batch of unequal texts
    positions = torch.tensor([row * length + column for row in range(batch) for column in (1, 3)])
    return ids, attention, positions


def is_onnx_folder(path: str | Path) -> bool:
    """Whether `path` is a folder written by `export_onnx`."""
    return (Path(path) / ONNX_FILE).is_file()


class OnnxBackend:
    """An exported model in an ONNX Runtime session: the CUDA provider when installed, else the CPU."""

    device = torch.device("cpu")  # logits come back as CPU tensors whatever the provider

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        ort = require_modules("onnxruntime")[0]
        from transformers import AutoConfig

        folder = Path(folder)
        if not is_onnx_folder(folder):
            raise ModelLoadError(
                f"{folder} holds no {ONNX_FILE}: write one with python -m mlm_helpers export."
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in wanted if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=providers)
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
        except Exception as error:  # ONNX Runtime raises its own exception types, not OSError
            raise ModelLoadError(f"Cannot load the ONNX model in {folder}: {error}") from None
        self.vocab_size = config.vocab_size
        self.max_length = position_limit(config) or 10**9

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        feed = dict(zip(INPUTS, (t.numpy() for t in (input_ids, attention_mask, positions))))
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def load_onnx(folder: str | Path, threads: int | None = None):
    """An `OnnxBackend` and the tokenizer saved beside it: ``backend, tokenizer = load_onnx(path)``."""
    from transformers import AutoTokenizer

    backend = OnnxBackend(folder, threads)
    check_tokenizer_files(Path(folder))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load the tokenizer saved in {folder}: {error}") from None
    return backend, tokenizer


@contextlib.contextmanager
def _quiet(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def require_modules(*names: str) -> list:
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as error:
        raise ModelLoadError(f"The ONNX path needs {error.name}: {INSTALL}.") from None
