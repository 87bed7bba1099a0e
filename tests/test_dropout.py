"""CPU dropout from fewer random draws: PyTorch's dropout in distribution, its attention in arithmetic."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile
from transformers import BertConfig, BertForMaskedLM

from mlm_helpers.training.cpu_settings import cpu_training
from mlm_helpers.training.dropout import UNIT, attention, cpu_dropout, dropout, has_dropout, keep_mask

from .families import DROPOUT_RATES, FAMILIES, family_model


def test_each_third_of_a_mask_keeps_at_the_rate_asked_independently_of_the_others():
    count = 3_000_000
    keep, scale = keep_mask(torch.Size([count]), 0.1, torch.Generator().manual_seed(0))
    assert keep.dtype == torch.bool and keep.shape == (count,)
    assert scale * round(0.9 * UNIT) == pytest.approx(UNIT)  # kept values' expectation: the input's
    thirds = keep.view(3, -1).float()  # the three numbers cut from each draw
    deviation = 6 * math.sqrt(0.9 * 0.1 / thirds.shape[1])  # six standard deviations
    assert (thirds.mean(1) - 0.9).abs().max() < deviation
    centred = thirds - thirds.mean(1, keepdim=True)
    correlation = (centred[0] * centred[1]).mean() / (centred[0].std() * centred[1].std())
    assert abs(correlation) < deviation
    neighbours = (centred[2, 1:] * centred[2, :-1]).mean() / centred[2].var()
    assert abs(neighbours) < deviation


def test_rates_round_to_multiples_of_two_to_the_minus_21():
    keep, scale = keep_mask(torch.Size([3000]), 1e-9)  # rounds to 0: all kept
    assert keep.all() and scale == 1.0
    keep, scale = keep_mask(torch.Size([3000]), 1 - 1e-9)  # rounds to 1: none
    assert not keep.any() and scale == 0.0
    assert keep_mask(torch.Size([0]), 0.1)[0].shape == (0,)


def test_masks_come_from_the_generator_so_a_seed_repeats_them():
    def mask(seed):
        return keep_mask(torch.Size([4, 1001]), 0.3, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(mask(1), mask(1)) and not torch.equal(mask(1), mask(2))


def test_dropout_zeroes_or_scales_each_element_and_its_gradient_alike():
    torch.manual_seed(0)
    x = torch.randn(64, 300, requires_grad=True)
    y = dropout(x, 0.25)
    keep, scale = y != 0, UNIT / round(0.75 * UNIT)
    assert torch.allclose(y[keep], x[keep] * scale) and 0.7 < keep.float().mean() < 0.8
    y.sum().backward()
    assert torch.equal(x.grad, keep.float() * scale)
    z = torch.ones(1000)
    assert dropout(z, 0.5, inplace=True) is z and set(z.unique().tolist()) == {0.0, UNIT / (UNIT // 2)}


def test_dropout_keeps_only_its_bool_mask_for_the_backward_pass():
    saved = []
    x = torch.randn(8, 1000, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        dropout(x, 0.1).sum().backward()
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.bool, (8, 1000))]


MASKS = {
    "none": {},
    "bool": {"attn_mask": torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) > 0.3},
    "additive": {"attn_mask": torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))},
    "causal": {"is_causal": True},
    "scaled": {"scale": 0.3},
}


@pytest.mark.parametrize("kind", MASKS)
def test_attention_without_dropout_is_pytorchs(kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    assert torch.allclose(
        attention(q, k, v, **MASKS[kind]), F.scaled_dot_product_attention(q, k, v, **MASKS[kind]), atol=1e-6
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 in and out, the arithmetic in fp32 as PyTorch's
        ours, theirs = (
            attention(q, k, v, **MASKS[kind]),
            F.scaled_dot_product_attention(q, k, v, **MASKS[kind]),
        )
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.allclose(ours.float(), theirs.float(), atol=1e-2)


def test_attention_with_grouped_heads_and_a_row_with_every_key_masked():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    assert torch.allclose(
        attention(q, k, v, enable_gqa=True),
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        atol=1e-6,
    )
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, 5] = False
    ours = attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask)
    assert torch.equal(ours[0, :, 5], torch.zeros(4, 8)) and not ours.isnan().any()


def test_within_the_block_attention_drops_its_probabilities_with_the_cheaper_masks():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    torch.manual_seed(5)
    with cpu_dropout() as on:
        ours = F.scaled_dot_product_attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(5)
    keep, scale = keep_mask(torch.Size([2, 4, 16, 16]), 0.2)
    probs = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1)
    assert on and torch.allclose(ours, (probs * keep * scale) @ v, atol=1e-6)


def tiny_model_with_dropout() -> BertForMaskedLM:
    torch.manual_seed(0)
    sizes = dict(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return BertForMaskedLM(BertConfig(**sizes, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2))


def test_a_model_trains_reproducibly_within_the_block_and_as_before_outside_it():
    model = tiny_model_with_dropout().train()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))

    def logits(seed, on):
        torch.manual_seed(seed)
        with cpu_dropout(on):
            return model(input_ids=ids).logits

    plain = logits(7, False)
    assert torch.equal(logits(7, True), logits(7, True)) and not torch.allclose(logits(7, True), plain)
    assert torch.equal(logits(7, False), plain)  # PyTorch's own dropout once the block is left
    model.eval()
    assert torch.equal(logits(7, True), logits(7, False))  # no dropout in evaluation
    state = torch.random.get_rng_state()
    with cpu_dropout():
        model(input_ids=ids)
    assert torch.equal(torch.random.get_rng_state(), state)  # nor any draw
    assert has_dropout(model) and not has_dropout(BertForMaskedLM(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))  # fmt: skip


@pytest.mark.parametrize(("recomputed", "cheaper"), [(False, True), (True, False)])
def test_train_draws_the_cheaper_masks_unless_layers_are_recomputed(recomputed, cheaper):
    # Gradient checkpointing recomputes a layer's forward outside the block: with PyTorch's dropout
    # there, it would draw other masks than the forward's.
    model, x = tiny_model_with_dropout(), torch.ones(4000)
    torch.manual_seed(3)
    theirs = F.dropout(x, 0.5)
    torch.manual_seed(3)
    with cpu_training(model, torch.device("cpu"), 1, recomputed=recomputed):
        inside = torch.nn.Dropout(0.5)(x)
    torch.manual_seed(3)
    assert torch.equal(inside, dropout(x, 0.5) if cheaper else theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_familys_dropout_attentions_included_draws_the_cheaper_masks(family):
    model = family_model(family, **dict.fromkeys(DROPOUT_RATES[family], 0.2)).train()
    assert has_dropout(model)
    ids = torch.randint(5, 100, (2, 16), generator=torch.Generator().manual_seed(0))

    def ops_run(on: bool) -> set[str]:
        with cpu_dropout(on), profile() as run:
            model(input_ids=ids).logits.sum().backward()
        return {event.key for event in run.key_averages()}

    assert "aten::bernoulli_" in ops_run(False)  # PyTorch's dropout draws, attention's among them
    ours = ops_run(True)
    assert "aten::bernoulli_" not in ours and "aten::random_" in ours
