"""Test labels in the training data's class order, when both name their classes; training data
whose named classes cannot be the model's."""
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


def check_named_classes(names: Sequence[str] | None, num_classes: int, source: str = "training data") -> None:
    """Refuse training data that names fewer classes than the model predicts: its classes are
    numbered in sorted-name order (a folder's subfolders), so one missing name shifts every label
    after it, and every score and the few-shot draw would be silently wrong."""
    if names is None or len(names) >= num_classes:
        return
    shown = ", ".join(list(names)[:4]) + (", ..." if len(names) > 4 else "")
    raise CrossDistillError(
        f"{source}: {len(names)} classes ({shown}) for a model that predicts {num_classes}: "
        "classes are numbered by their sorted names, so a missing one shifts every label after it; give every "
        "class in the model's order (an empty folder for a class without images)")
