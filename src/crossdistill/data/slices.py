"""`SPEC[start:stop]`: a contiguous part of a data set, named in a config like any data path.

Choosing settings without looking at the test images needs a validation split carved out of the
training data (CIFAR-10's train[49000:]); writing it as a data spec keeps that choice inside the
config, so a sweep row records exactly which images scored it (`eval_data: train.npz[49000:]`).
"""
from __future__ import annotations

import re

import numpy as np

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays

# Python slice bounds, without a step: a data split is contiguous.
_SLICE = re.compile(r"^(?P<base>.+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def split_slice(spec: str) -> tuple[str, slice] | None:
    """('PATH', slice(start, stop)) for 'PATH[start:stop]', else None."""
    m = _SLICE.match(spec.strip())
    if m is None:
        return None
    start, stop = (int(v) if v else None for v in (m.group("start"), m.group("stop")))
    return m.group("base"), slice(start, stop)


def take(data: ImageArrays, part: slice, spec: str) -> ImageArrays:
    """The images `part` of `data`, in order; an empty selection is an error (it scores nothing)."""
    idx = np.arange(len(data.y))[part]
    if idx.size == 0:
        raise CrossDistillError(f"{spec}: the slice selects none of the {len(data.y)} images")
    return ImageArrays(x=data.x[idx], y=data.y[idx], num_classes=data.num_classes,
                       class_names=data.class_names, source=spec,
                       files=None if data.files is None else [data.files[int(i)] for i in idx])
