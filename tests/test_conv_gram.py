"""The Gram of a 'same' stride-1 conv's patches from shifted maps equals the unfolded product."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill import conv_gram
from crossdistill.moments import MomentAccumulator


def unfolded(a: torch.Tensor, b: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
    pad = ((k[0] - 1) // 2, (k[1] - 1) // 2)
    return torch.einsum("ndl,nel->de", F.unfold(a, k, padding=pad), F.unfold(b, k, padding=pad))


@pytest.mark.parametrize("shape,kernel", [((2, 3, 5, 6), (3, 3)), ((2, 2, 4, 4), (5, 5)), ((3, 2, 1, 7), (3, 3)),
                                          ((2, 3, 6, 5), (3, 1)), ((1, 2, 2, 2), (5, 3)), ((2, 4, 9, 9), (1, 3))])
def test_shifted_gram_is_the_unfolded_gram(shape, kernel):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(shape, generator=gen, dtype=torch.float64)
    b = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert torch.allclose(conv_gram.shifted_gram(a, b, kernel), unfolded(a, b, kernel), rtol=1e-12, atol=1e-12)
    assert torch.allclose(conv_gram.shifted_gram(a, a, kernel), unfolded(a, a, kernel), rtol=1e-12, atol=1e-12)


def test_only_same_stride_one_convs_on_large_maps_take_the_shortcut():
    assert conv_gram.applies(nn.Conv2d(4, 4, 3, padding=1), 16, 16)
    assert not conv_gram.applies(nn.Conv2d(4, 4, 3, padding=1), 8, 8)
    assert not conv_gram.applies(nn.Conv2d(4, 4, 3, padding=1, stride=2))
    assert not conv_gram.applies(nn.Conv2d(4, 4, 3, padding=0))
    assert not conv_gram.applies(nn.Conv2d(4, 4, 3, padding=2, dilation=2))
    assert not conv_gram.applies(nn.Conv2d(4, 4, 3, padding=1, groups=2))
    assert not conv_gram.applies(nn.Conv2d(4, 4, 1))
    assert not conv_gram.applies(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    assert not conv_gram.applies(nn.Linear(4, 4))


def test_symmetric_grams_take_the_shortcut_by_channels_times_side():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    assert conv_gram.applies(conv, 8, 8, symmetric_channels=64)       # 512: measured faster
    assert not conv_gram.applies(conv, 8, 8, symmetric_channels=32)   # 256: slower
    assert conv_gram.applies(conv, 7, 9, symmetric_channels=128)
    assert not conv_gram.applies(conv, 6, 6, symmetric_channels=512)  # below the smallest map
    assert not conv_gram.applies(conv, 8, 8)                          # a's Gram against another b: MIN_MAP


@pytest.mark.parametrize("shape", [(3, 7, 7, 7), (2, 5, 8, 8), (2, 3, 9, 7)])
def test_symmetric_shifted_gram_on_small_maps_is_the_unfolded_gram(shape):
    # Half the shifts and strips: on 7x7 and 8x8 maps the strips are a third of the map.
    a = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(conv_gram.shifted_gram(a, a, (3, 3)), unfolded(a, a, (3, 3)), rtol=1e-12, atol=1e-12)


def test_moments_of_a_large_map_conv_match_the_unfolded_moments():
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    xt, xs = torch.randn(20, 3, 12, 10, generator=gen), torch.randn(20, 3, 12, 10, generator=gen)
    fast = MomentAccumulator(conv)
    fast.add(xt, xs)
    m = fast.finish()
    n = 20 * 12 * 10
    assert m.count == n
    assert torch.allclose(m.tt, unfolded(xt.double(), xt.double(), (3, 3)) / n, rtol=1e-5, atol=1e-6)
    assert torch.allclose(m.ts, unfolded(xt.double(), xs.double(), (3, 3)) / n, rtol=1e-5, atol=1e-6)
    assert torch.allclose(m.ss, unfolded(xs.double(), xs.double(), (3, 3)) / n, rtol=1e-5, atol=1e-6)
