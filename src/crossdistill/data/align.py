"""Test labels in the training data's class order, when both name their classes."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays


def align_classes(test: ImageArrays, names: Sequence[str] | None) -> ImageArrays:
    """`test` with its labels renumbered to the training data's classes `names`, by name. Two
    folders or .npz files read separately each number their own classes: a test set that lacks
    one of them would otherwise have every later label shifted by one, and be scored against the
    wrong classes. Without names on both sides the labels are taken as they are."""
    if names is None or test.class_names is None or list(names) == list(test.class_names):
        return test
    index = {name: i for i, name in enumerate(names)}
    extra = sorted(set(test.class_names) - set(index))
    if extra:
        raise CrossDistillError(f"{test.source or 'test data'}: classes {extra} that the training data does not "
                                f"have (its classes: {list(names)})")
    mapping = np.asarray([index[name] for name in test.class_names], dtype=np.int64)
    return dataclasses.replace(test, y=mapping[test.y], num_classes=len(names), class_names=list(names))
