"""The ONNX path: `python -m mlm_helpers export`, then the same Predictor API on ONNX Runtime."""

import io
import json
import shutil

import pytest
from transformers import pipeline

from mlm_helpers import ModelLoadError, PredictionError, Predictor
from mlm_helpers.cli import main
from mlm_helpers.predict.onnx_backend import ONNX_FILE, OnnxBackend, quantize_weights, require_modules

from .conftest import tiny_bert
from .test_predictor import SENTENCES, assert_same_as_pipeline

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """A tiny model saved as training saves it, then exported by the command line (once: ~10 s)."""
    root = tmp_path_factory.mktemp("onnx")
    model = tiny_bert(len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return model, root


def test_export_writes_a_checked_folder(exported, capsys):
    model, root = exported
    assert main(["export", "--model", str(root / "model"), "--output", str(root / "onnx")]) == 0
    out = capsys.readouterr().out
    assert "largest logit difference from PyTorch" in out and "float32" in out
    assert {ONNX_FILE, "config.json", "tokenizer.json"} <= {p.name for p in (root / "onnx").iterdir()}
    assert sorted(p.name for p in root.iterdir()) == ["model", "onnx"]  # no staging folder left behind


@pytest.fixture(scope="module")
def onnx_folder(exported):
    _, root = exported
    if not (root / "onnx" / ONNX_FILE).is_file():
        assert main(["export", "--model", str(root / "model"), "--output", str(root / "onnx")]) == 0
    return root / "onnx"


def test_onnx_runtime_answers_as_the_pipeline(exported, onnx_folder, tokenizer):
    model, _ = exported
    fill_mask = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    predictor = Predictor.load(onnx_folder)
    assert isinstance(predictor.backend, OnnxBackend)
    for text in SENTENCES:
        assert_same_as_pipeline(predictor(text, top_k=10), fill_mask(text, top_k=10))


def test_onnx_runtime_matches_pytorch_in_every_mode(exported, onnx_folder, tokenizer):
    model, _ = exported
    ours, torch_predictor = (
        Predictor.load(onnx_folder, batch_size=3),
        Predictor(model, tokenizer, batch_size=3),
    )
    texts = [*SENTENCES, "[MASK] [MASK] and a [MASK].", "the " * 300 + "[MASK]"]  # padding, masks, a window
    for onnx_result, torch_result in zip(
        ours.predict(texts, top_k=4), torch_predictor.predict(texts, top_k=4)
    ):
        for a, b in zip(onnx_result.masks, torch_result.masks):
            assert [c.token_id for c in a] == [c.token_id for c in b]
            assert [c.probability for c in a] == pytest.approx([c.probability for c in b], abs=1e-5)
    targets = ["breakfasted", "the"]
    a, b = ours.predict(SENTENCES[1], targets=targets), torch_predictor.predict(SENTENCES[1], targets=targets)
    assert [c.probability for c in a.masks[0]] == pytest.approx([c.probability for c in b.masks[0]], rel=1e-4)
    a, b = ours.fill(texts[-2], top_k=3), torch_predictor.fill(texts[-2], top_k=3)
    assert [f.token_ids for f in a] == [f.token_ids for f in b]


def test_the_command_line_predicts_with_an_export(onnx_folder, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("The quick brown [MASK] jumps.\n\nA [MASK] and a [MASK].\n"))
    assert main(["predict", "--model", str(onnx_folder), "--json", "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(line["masks"]) for line in lines] == [1, 2] and len(lines[1]["masks"][1]) == 2
    assert main(["predict", "--model", str(onnx_folder), "--joint", "A [MASK] and a [MASK]."]) == 0
    assert "[MASK]" not in capsys.readouterr().out.splitlines()[1]


def test_quantized_weights_are_smaller_and_close(onnx_folder, tmp_path):
    copy = shutil.copytree(onnx_folder, tmp_path / "int8")
    quantize_weights(copy / ONNX_FILE)
    assert (copy / ONNX_FILE).stat().st_size < (onnx_folder / ONNX_FILE).stat().st_size
    exact, quantized = Predictor.load(onnx_folder), Predictor.load(copy)
    best = exact.predict(SENTENCES[0]).masks[0][0]
    again = quantized.predict(SENTENCES[0], targets=best.token).masks[0][0]
    assert again.probability == pytest.approx(best.probability, rel=0.1)


def test_bad_exports_and_folders_are_reported(tmp_path, capsys, onnx_folder):
    assert main(["export", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: Model folder not found")
    with pytest.raises(ModelLoadError, match="pip install"):
        require_modules("a_module_that_is_not_installed")
    with pytest.raises(ModelLoadError, match="holds no model.onnx"):
        OnnxBackend(tmp_path)
    broken = shutil.copytree(onnx_folder, tmp_path / "broken")
    (broken / ONNX_FILE).write_bytes(b"not a graph")
    with pytest.raises(ModelLoadError, match="Cannot load the ONNX model"):
        Predictor.load(broken)
    with pytest.raises(PredictionError, match="drop device and bf16"):
        Predictor.load(onnx_folder, bf16=True)


def test_an_export_onto_a_full_disk_leaves_the_previous_export_whole(
    exported, onnx_folder, tmp_path, monkeypatch, capsys
):
    import errno

    import torch

    previous = shutil.copytree(onnx_folder, tmp_path / "onnx")
    before = {path.name: path.read_bytes() for path in previous.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full_disk)
    capsys.readouterr()
    assert main(["export", "--model", str(exported[1] / "model"), "--output", str(previous)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in previous.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no staging folder left
