"""The LoRA layer's mathematics, checked against independent computations (numpy SVD, the base)."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rankgym.lora.layer import LoRALayer, lora_scale


def trained(layer: LoRALayer, seed: int = 0) -> LoRALayer:
    """Give the adapter a non-zero B, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B[:, : layer.rank] = torch.randn(layer.out_features, layer.rank, generator=g)
    return layer


def bases():
    torch.manual_seed(0)
    return [nn.Linear(24, 16), Conv1D(16, 24)]  # Conv1D(nf=out, nx=in): weight 24 x 16


def test_replace_module_swaps_a_dotted_submodule_and_returns_the_old_one():
    from rankgym.lora.inject import replace_module

    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    old, new = model[0][0], nn.Linear(4, 4)
    assert replace_module(model, "0.0", new) is old
    assert model.get_submodule("0.0") is new and model[0][1].__class__ is nn.ReLU and len(list(model.modules())) == 5


@pytest.mark.parametrize("base", bases(), ids=["linear", "conv1d"])
def test_growing_leaves_output_unchanged(base):
    layer = trained(LoRALayer(base, rank=4, max_rank=12))
    x = torch.randn(5, 24)
    before = layer(x)
    assert not torch.allclose(before, base(x))  # the adapter does something
    layer.set_rank(10)
    assert layer.rank == 10
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rslora", [False, True])
def test_growing_keeps_update_for_each_alpha_policy(rslora):
    layer = trained(LoRALayer(nn.Linear(20, 20), rank=3, max_rank=9, alpha=8.0, rslora=rslora))
    delta = layer.delta_weight().detach().clone()
    layer.set_rank(9)
    torch.testing.assert_close(layer.delta_weight(), delta, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base", bases(), ids=["linear", "conv1d"])
def test_svd_shrink_error_is_exactly_the_discarded_singular_values(base):
    layer = LoRALayer(base, rank=8, max_rank=8, alpha=8.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.out_features, 8, generator=g))
    before = layer.delta_weight().detach().double().numpy()
    singular = np.linalg.svd(before, compute_uv=False)
    layer.set_rank(3, shrink="svd")
    after = layer.delta_weight().detach().double().numpy()
    error = np.linalg.svd(before - after, compute_uv=False)
    # Eckart-Young: the best rank-3 approximation leaves exactly sigma_4..sigma_8 as the error.
    np.testing.assert_allclose(error[:5], singular[3:8], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(error[5:], 0, atol=1e-4)
    assert np.linalg.matrix_rank(after, tol=1e-4) == 3


def test_prefix_shrink_keeps_the_first_components():
    layer = trained(LoRALayer(nn.Linear(10, 10), rank=6, max_rank=6))
    a, b = layer.lora_A[:2].detach().clone(), layer.lora_B[:, :2].detach().clone()
    layer.set_rank(2, shrink="prefix")
    torch.testing.assert_close(layer.lora_A[:2], a)
    torch.testing.assert_close(layer.lora_B[:, :2], b)
    assert layer.lora_A[2:].abs().sum() == 0 and layer.lora_B[:, 2:].abs().sum() == 0


@pytest.mark.parametrize("base", bases(), ids=["linear", "conv1d"])
def test_merge_and_unmerge_are_exact(base):
    layer = trained(LoRALayer(base, rank=5, max_rank=5))
    original = base.weight.detach().clone()
    x = torch.randn(7, 24)
    expected = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base(x), expected, rtol=1e-5, atol=1e-5)  # the update now lives in the weight
    layer.unmerge()
    torch.testing.assert_close(base.weight, original, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.merge()
    layer.unmerge(original)  # the exact restore the elastic evaluator relies on
    assert torch.equal(base.weight, original) and not layer.merged


@pytest.mark.parametrize("base", bases(), ids=["linear", "conv1d"])
def test_rank_zero_is_the_base_and_costs_nothing(base):
    layer = trained(LoRALayer(base, rank=4, max_rank=8))
    layer.set_rank(0)
    x = torch.randn(3, 24)
    assert torch.equal(layer(x), base(x))
    assert layer.trainable_parameters() == 0
    zero = LoRALayer(nn.Linear(6, 4), rank=0)
    assert zero.lora_A.numel() == 0 and torch.equal(zero(torch.ones(2, 6)), zero.base(torch.ones(2, 6)))


def test_ranks_above_min_in_out_are_refused():
    with pytest.raises(ValueError, match=r"0\.\.16"):
        LoRALayer(nn.Linear(24, 16), rank=17)
    with pytest.raises(ValueError, match=r"0\.\.16"):
        LoRALayer(nn.Linear(24, 16), rank=2).set_rank(17)


def test_growing_past_max_rank_reallocates_and_keeps_the_output():
    layer = trained(LoRALayer(nn.Linear(24, 16), rank=2, max_rank=4))
    x = torch.randn(3, 24)
    before = layer(x)
    layer.set_rank(10)
    assert layer.max_rank == 10 and layer.lora_A.shape == (10, 24) and layer.lora_B.requires_grad
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


def test_base_is_frozen_and_trainable_count_is_r_times_in_plus_out():
    layer = LoRALayer(nn.Linear(24, 16), rank=3, max_rank=8)
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.trainable_parameters() == 3 * (24 + 16)


def test_scale_policies():
    assert lora_scale(8, 16.0) == 2.0
    assert lora_scale(4, 2.0, "ratio") == 2.0 and lora_scale(16, 2.0, "ratio") == 2.0
    assert lora_scale(16, 8.0, rslora=True) == pytest.approx(8.0 / math.sqrt(16))
    assert lora_scale(0, 16.0) == 0.0
