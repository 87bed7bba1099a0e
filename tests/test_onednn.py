"""Linear layers' forward products by oneDNN while training on a CPU: the same outputs and gradients as
`F.linear`, only in the layers it is meant for."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from mlm_helpers import onednn
from mlm_helpers.onednn import ONEDNN_FROM, onednn_training, onednn_works, trainable_linear

from .families import FAMILIES, family_model

pytestmark = pytest.mark.skipif(not onednn_works(), reason="this torch build has no oneDNN inner product")


def linear_and_grads(fn, x, weight, bias, grad):
    """fn's output, and the gradients of x, weight and bias (None for what needs none), from copies."""
    x, weight = x.detach().requires_grad_(x.requires_grad), weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    out = fn(x, weight, bias)
    out.backward(grad)
    return out.detach(), [None if t is None else t.grad for t in (x, weight, bias)]


@pytest.mark.parametrize(
    ("shape", "with_bias", "x_grad"),
    [((3, 7, 16), True, True), ((5, 16), False, True), ((2, 4, 16), True, False)],
)
def test_outputs_and_gradients_are_linears(shape, with_bias, x_grad):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).requires_grad_(x_grad)
    weight = torch.randn(8, 16, generator=generator).requires_grad_()
    bias = torch.randn(8, generator=generator).requires_grad_() if with_bias else None
    grad = torch.randn(*shape[:-1], 8, generator=generator)
    ours, our_grads = linear_and_grads(trainable_linear, x, weight, bias, grad)
    theirs, their_grads = linear_and_grads(F.linear, x, weight, bias, grad)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (
        [g is None for g in our_grads]
        == [g is None for g in their_grads]
        == [not x_grad, False, not with_bias]
    )
    for mine, yours in zip(our_grads, their_grads):
        assert mine is None or torch.allclose(mine, yours, rtol=1e-5, atol=1e-5)


def ops(fn) -> set[str]:
    with profile() as run:
        fn()
    return {event.key for event in run.key_averages()}


def test_within_the_block_large_float32_layers_run_on_onednn_and_the_others_as_before(monkeypatch):
    large = torch.nn.Linear(1024, ONEDNN_FROM // 1024)
    small = torch.nn.Linear(16, 8)
    x, tiny = torch.randn(4, 1024), torch.randn(4, 16)
    model = torch.nn.ModuleList([large, small])  # what the block asks of a model: a layer worth it
    with onednn_training(model) as on:
        assert on
        assert "mkldnn::_linear_pointwise" in ops(lambda: large(x).sum().backward())
        inside = large(x)
        assert "mkldnn::_linear_pointwise" not in ops(lambda: small(tiny))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own bf16 layer
            assert large(x).dtype == torch.bfloat16
        wide = torch.nn.Linear(1024, ONEDNN_FROM // 1024, dtype=torch.float64)  # oneDNN's op is float32
        assert "mkldnn::_linear_pointwise" not in ops(lambda: wide(x.double()))
    assert torch.allclose(inside, large(x), rtol=1e-5, atol=1e-5)
    assert "mkldnn::_linear_pointwise" not in ops(lambda: large(x))  # the block left
    with onednn_training(model, enabled=False) as on:
        assert not on and "mkldnn::_linear_pointwise" not in ops(lambda: large(x))
    with onednn_training(torch.nn.ModuleList([small])) as on:  # no layer worth it: not entered
        assert not on
    monkeypatch.setattr(onednn, "onednn_works", lambda: False)
    with onednn_training(model) as on:
        assert not on


@pytest.mark.parametrize("family", FAMILIES)
def test_every_familys_layers_and_head_run_on_onednn_to_the_same_loss_and_gradients(family, monkeypatch):
    monkeypatch.setattr(onednn, "ONEDNN_FROM", 0)  # the tiny model's layers too
    model = family_model(family)  # in eval mode: no dropout, so both runs compute alike
    ids = torch.randint(5, 100, (2, 16), generator=torch.Generator().manual_seed(0))

    def loss_and_gradients(on: bool):
        model.zero_grad(set_to_none=True)
        with onednn_training(model, enabled=on) as used, profile() as run:
            loss = model(input_ids=ids).logits.square().mean()
            loss.backward()
        assert used == on
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, {event.key for event in run.key_averages()}

    loss, grads, ops_run = loss_and_gradients(True)
    their_loss, their_grads, their_ops = loss_and_gradients(False)
    assert "mkldnn::_linear_pointwise" in ops_run and "mkldnn::_linear_pointwise" not in their_ops
    assert torch.allclose(loss, their_loss, rtol=1e-5)
    assert grads.keys() == their_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, their_grads[name], rtol=1e-4, atol=1e-6), name
