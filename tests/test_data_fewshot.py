"""Few-shot sampling and the JSON index files that make a run reproducible."""
from __future__ import annotations

import json

import numpy as np
import pytest

from crossdistill.data import load_indices, sample_few_shot, save_indices
from crossdistill.errors import CrossDistillError

# 3 classes, interleaved, with 10/12/8 members; class 2 is the smallest.
LABELS = np.array([0, 1, 2] * 8 + [1, 0, 1, 1, 0, 1])
COUNTS = np.bincount(LABELS)


def test_label_fixture_counts():
    assert COUNTS.tolist() == [10, 12, 8]


def test_same_seed_same_indices_different_seed_different():
    a = sample_few_shot(LABELS, shots=3, seed=7)
    b = sample_few_shot(LABELS, shots=3, seed=7)
    c = sample_few_shot(LABELS, shots=3, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_exact_per_class_counts(k):
    idx = sample_few_shot(LABELS, shots=k, seed=0)
    assert np.bincount(LABELS[idx], minlength=3).tolist() == [k, k, k]
    assert len(np.unique(idx)) == len(idx)


def test_first_mode_picks_first_k_of_each_class():
    idx = sample_few_shot(LABELS, shots=2, mode="first", seed=123)
    expected = sorted(np.flatnonzero(LABELS == c)[:2].tolist() for c in range(3))
    assert idx.tolist() == sorted(sum(expected, []))
    assert idx.tolist() == [0, 1, 2, 3, 4, 5]


def test_random_mode_is_not_first_mode():
    firsts = sample_few_shot(LABELS, shots=2, mode="first")
    draws = [sample_few_shot(LABELS, shots=2, seed=s) for s in range(5)]
    assert any(not np.array_equal(d, firsts) for d in draws)


def test_n_samples_overall():
    idx = sample_few_shot(LABELS, n=5, seed=3)
    assert len(idx) == 5 and len(np.unique(idx)) == 5 and idx.max() < len(LABELS)
    assert np.array_equal(idx, sample_few_shot(LABELS, n=5, seed=3))
    assert sample_few_shot(LABELS, n=4, mode="first").tolist() == [0, 1, 2, 3]


def test_too_many_shots_names_smallest_class():
    with pytest.raises(CrossDistillError, match=r"class 2 \(bird\) has \(8 samples\): give shots 8 or fewer"):
        sample_few_shot(LABELS, shots=9, class_names=["plane", "car", "bird"])


def test_a_class_without_images_is_skipped_and_one_with_too_few_refused():
    """A class with no image (an empty class folder; the pipeline warns about it) is left out of
    the draw, so the others still get K each; a class with some but fewer than K is an error."""
    idx = sample_few_shot(LABELS, shots=1, num_classes=4)
    assert sorted(np.asarray(LABELS)[idx].tolist()) == [0, 1, 2]
    labels = np.asarray(list(LABELS) + [3])
    with pytest.raises(CrossDistillError, match="class 3 has \\(1 sample\\): give shots 1 or fewer"):
        sample_few_shot(labels, shots=2, num_classes=4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shots": 0}, ">= 1"),
        ({"n": 0}, ">= 1"),
        ({"shots": 2, "n": 3}, "exactly one"),
        ({}, "exactly one"),
        ({"n": len(LABELS) + 1}, "larger than"),
        ({"shots": 1, "mode": "stratified"}, "unknown sampling mode"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(CrossDistillError, match=match):
        sample_few_shot(LABELS, **kwargs)


def test_save_and_load_indices_roundtrip(tmp_path):
    idx = sample_few_shot(LABELS, shots=2, seed=5)
    path = save_indices(tmp_path / "sub" / "fewshot.json", idx, {"seed": np.int64(5), "shots": 2})
    back, meta = load_indices(path)
    assert np.array_equal(back, idx) and back.dtype == np.int64
    assert meta == {"seed": 5, "shots": 2}
    assert [p.name for p in path.parent.iterdir()] == ["fewshot.json"]  # no temp files left


def test_load_indices_refuses_bad_files(tmp_path):
    with pytest.raises(CrossDistillError, match="not found"):
        load_indices(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CrossDistillError, match="JSON"):
        load_indices(bad)
    path = save_indices(tmp_path / "ok.json", [1, 2, 3])
    doc = json.loads(path.read_text())
    doc["indices"] = [1, -2, 3]
    path.write_text(json.dumps(doc))
    with pytest.raises(CrossDistillError, match="non-negative"):
        load_indices(path)
    doc["indices"] = [1, 2]
    path.write_text(json.dumps(doc))
    with pytest.raises(CrossDistillError, match="holds 2"):
        load_indices(path)
