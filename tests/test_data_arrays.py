"""ImageArrays validation and the uint8 -> tensor conversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdistill.data import (
    FASHION_MEAN,
    FASHION_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageArrays,
    iterate_batches,
    to_tensor,
)
from crossdistill.errors import CrossDistillError


def make(n: int = 6, h: int = 4, w: int = 5, c: int = 3, k: int = 3) -> ImageArrays:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    y = np.arange(n) % k
    return ImageArrays(x=x, y=y, num_classes=k, source="synthetic")


def test_valid_arrays_cast_labels_to_int64():
    a = ImageArrays(
        x=np.zeros((3, 2, 2, 1), np.uint8), y=np.array([0, 1, 1], np.uint8), num_classes=2
    )
    assert a.y.dtype == np.int64
    assert len(a) == 3
    assert a.image_shape == (2, 2, 1)
    assert a.class_counts().tolist() == [1, 2]


@pytest.mark.parametrize(
    "x, y, k, match",
    [
        (np.zeros((3, 2, 2), np.uint8), np.zeros(3, int), 2, r"uint8 images \(N, H, W, C\) or float signals \(N, C, L\)"),
        (np.full((3, 2, 5), np.inf, np.float32), np.zeros(3, int), 2, "signal data: x contains NaN or infinite"),
        (np.zeros((3, 2, 2, 1), np.float32), np.zeros(3, int), 2, "uint8"),
        (np.full((3, 2, 2, 1), np.nan, np.float32), np.zeros(3, int), 2, "NaN"),
        (np.zeros((3, 2, 2, 1), np.int64), np.zeros(3, int), 2, "uint8"),
        (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(2, int), 2, "3 images but 2 labels"),
        (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(3, np.float64), 2, "integers"),
        (np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 1, 2]), 2, "label 2 is outside"),
        (np.zeros((3, 2, 2, 1), np.uint8), np.array([0, -1, 1]), 2, "label -1 is negative"),
        (np.zeros((0, 2, 2, 1), np.uint8), np.zeros(0, int), 2, "empty"),
        (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(3, int), 0, "num_classes"),
    ],
)
def test_invalid_arrays_are_refused(x, y, k, match):
    with pytest.raises(CrossDistillError, match=match):
        ImageArrays(x=x, y=y, num_classes=k)


def test_float_signals_are_taken_as_stored_in_float32():
    x = np.linspace(-3, 3, 3 * 2 * 5).reshape(3, 2, 5)  # float64 (N, C, L)
    a = ImageArrays(x=x, y=np.array([0, 1, 1]), num_classes=2)
    assert a.is_signal and a.input_shape == (2, 5) and a.x.dtype == np.float32
    np.testing.assert_array_equal(a.x, x.astype(np.float32))
    assert not ImageArrays(x=np.zeros((3, 4, 5, 1), np.uint8), y=np.zeros(3, int), num_classes=1).is_signal


def test_float_pixels_message_names_expected_dtype_and_range():
    x = np.full((2, 2, 2, 3), 0.5, np.float32)
    with pytest.raises(CrossDistillError) as err:
        ImageArrays(x=x, y=np.zeros(2, int), num_classes=1)
    msg = str(err.value)
    assert "uint8" in msg and "float32" in msg and "0.5" in msg


def test_class_names_must_match_num_classes():
    with pytest.raises(CrossDistillError, match="2 class names for 3 classes"):
        ImageArrays(
            x=np.zeros((1, 1, 1, 1), np.uint8), y=np.zeros(1, int), num_classes=3,
            class_names=["a", "b"],
        )


def test_subset_keeps_order_and_metadata():
    a = make()
    s = a.subset([4, 1])
    assert np.array_equal(s.x, a.x[[4, 1]])
    assert s.y.tolist() == [a.y[4], a.y[1]]
    assert s.num_classes == a.num_classes and s.source == a.source
    with pytest.raises(CrossDistillError, match="outside"):
        a.subset([0, 6])
    with pytest.raises(CrossDistillError, match="outside"):
        a.subset([-1])


def test_to_tensor_normalises_known_pixels():
    x = np.zeros((1, 1, 2, 3), np.uint8)
    x[0, 0, 1] = (255, 128, 0)
    t = to_tensor(x, IMAGENET_MEAN, IMAGENET_STD)
    assert t.dtype == torch.float32 and t.shape == (1, 3, 1, 2)
    expected = [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    assert torch.allclose(t[0, :, 0, 1], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(t[0, 0, 0, 0], torch.tensor(-0.485 / 0.229), atol=1e-6)
    assert t.is_contiguous()


def test_to_tensor_refuses_wrong_input():
    with pytest.raises(CrossDistillError, match="uint8"):
        to_tensor(np.zeros((1, 2, 2, 3), np.float32), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(CrossDistillError, match="3-channel"):
        to_tensor(np.zeros((1, 2, 2, 3), np.uint8), (0.5, 0.5), (1.0, 1.0))
    with pytest.raises(CrossDistillError, match="positive"):
        to_tensor(np.zeros((1, 2, 2, 1), np.uint8), (0.5,), (0.0,))


def test_iterate_batches_covers_everything_once():
    a = make(n=7, c=1)
    batches = list(iterate_batches(a, 3, FASHION_MEAN, FASHION_STD))
    assert [len(b[1]) for b in batches] == [3, 3, 1]
    ys = torch.cat([b[1] for b in batches])
    assert ys.dtype == torch.int64 and ys.tolist() == a.y.tolist()
    xs = torch.cat([b[0] for b in batches])
    assert torch.allclose(xs, to_tensor(a.x, FASHION_MEAN, FASHION_STD))

    shuffled = list(iterate_batches(a, 3, FASHION_MEAN, FASHION_STD, shuffle=True, seed=1))
    ys2 = torch.cat([b[1] for b in shuffled])
    assert sorted(ys2.tolist()) == sorted(a.y.tolist())
    with pytest.raises(CrossDistillError, match="batch_size"):
        next(iterate_batches(a, 0, FASHION_MEAN, FASHION_STD))
