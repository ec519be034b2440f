"""`PATH[start:stop]` data specs (crossdistill.data.slices): a validation split named in a config."""
from __future__ import annotations

import numpy as np
import pytest

from crossdistill.data import load_image_data
from crossdistill.errors import CrossDistillError
from sweep_helpers import write_npz_pair


@pytest.fixture
def train(tmp_path):
    return write_npz_pair(tmp_path, n_train=40, n_test=20)[0]


def test_slice_of_an_npz_file(train):
    full = load_image_data(str(train))
    part = load_image_data(f"{train}[30:]")
    assert np.array_equal(part.x, full.x[30:]) and np.array_equal(part.y, full.y[30:])
    assert part.source == f"{train}[30:]" and part.num_classes == full.num_classes
    assert np.array_equal(load_image_data(f"{train}[:10]").y, full.y[:10])
    assert np.array_equal(load_image_data(f"{train}[-5:-1]").y, full.y[-5:-1])
    assert len(load_image_data(f"{train}[:]").y) == 40


def test_bad_slices(train, tmp_path):
    with pytest.raises(CrossDistillError, match="selects none of the 40 images"):
        load_image_data(f"{train}[40:]")
    with pytest.raises(CrossDistillError, match="no such file"):
        load_image_data(f"{tmp_path / 'missing.npz'}[1:]")
    with pytest.raises(CrossDistillError, match="no such file"):
        load_image_data(f"{train}[1:2:3]")  # no step: a split is contiguous


def test_a_real_file_whose_name_ends_in_brackets_wins(train, tmp_path):
    odd = tmp_path / "odd.npz[1:]"
    odd.write_bytes(train.read_bytes())
    with pytest.raises(CrossDistillError, match="unsupported file type"):  # read as the file it is
        load_image_data(str(odd))
