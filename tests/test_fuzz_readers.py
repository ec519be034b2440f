"""Property-based tests: every reader of untrusted bytes either returns data or raises
CrossDistillError. Never another exception type, never a hang.

Inputs are random bytes, valid files cut short, and valid files with a few bytes overwritten.
Example counts are small so the whole file runs in a few seconds.
"""
from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossdistill.data import read_cifar10_batch, read_idx, read_npz, safe_unpickle
from crossdistill.errors import CrossDistillError
from crossdistill.models import create_model, load_checkpoint
from crossdistill.persistence import load, parse_info, read_info, save

FAST = settings(max_examples=20, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

_DIR = Path(tempfile.mkdtemp(prefix="crossdistill-fuzz-"))


def _valid_npz() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x=rng.integers(0, 256, (4, 6, 6, 1), dtype=np.uint8), y=np.arange(4) % 2)
    return buf.getvalue()


def _valid_idx(gz: bool) -> bytes:
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 3, 4, 4) + bytes(range(48))
    return gzip.compress(raw, mtime=0) if gz else raw


def _valid_cifar() -> bytes:
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    return pickle.dumps(batch, protocol=2)


def _valid_model() -> bytes:
    torch.manual_seed(0)
    path = save(create_model("fashion_cnn", channels=[2, 3, 2]), _DIR / "valid.safetensors")
    return path.read_bytes()


def _valid_th() -> bytes:
    buf = io.BytesIO()
    torch.save(create_model("fashion_cnn", channels=[2, 3, 2]).state_dict(), buf)
    return buf.getvalue()


VALID = {
    "npz": _valid_npz(),
    "idx": _valid_idx(False),
    "idx.gz": _valid_idx(True),
    "cifar": _valid_cifar(),
    "safetensors": _valid_model(),
    "th": _valid_th(),
}


def _write(data: bytes, suffix: str) -> Path:
    path = _DIR / f"f{suffix}"
    path.write_bytes(data)
    return path


READERS = {
    "npz": (".npz", read_npz),
    "idx": (".idx", read_idx),
    "idx.gz": (".idx.gz", read_idx),
    "cifar": ("", read_cifar10_batch),
    "safetensors": (".safetensors", load),
    "th": (".th", load_checkpoint),
}


def _only_our_error(fn, path: Path) -> None:
    try:
        fn(path)
    except CrossDistillError as exc:
        assert str(exc), "the error needs a message"


mutations = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4)


@pytest.mark.parametrize("kind", list(READERS))
@FAST
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_our_error(kind, data):
    suffix, fn = READERS[kind]
    _only_our_error(fn, _write(data, suffix))


@pytest.mark.parametrize("kind", list(READERS))
@FAST
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_are_refused(kind, cut):
    suffix, fn = READERS[kind]
    valid = VALID[kind]
    path = _write(valid[: int(cut * len(valid))], suffix)
    with pytest.raises(CrossDistillError):
        fn(path)


@pytest.mark.parametrize("kind", list(READERS))
@FAST
@given(changes=mutations)
def test_corrupted_files_load_or_raise_our_error(kind, changes):
    suffix, fn = READERS[kind]
    data = bytearray(VALID[kind])
    for pos, byte in changes:
        data[pos % len(data)] = byte
    _only_our_error(fn, _write(bytes(data), suffix))


@FAST
@given(data=st.binary(max_size=200))
def test_safe_unpickle_random_bytes(data):
    try:
        safe_unpickle(data, source="fuzz")
    except CrossDistillError:
        pass


# -- the model document (spec loader) ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
VALID_DOC = read_info(_DIR / "valid.safetensors").to_json()
DOC_KEYS = sorted(VALID_DOC)


@FAST
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_spec_loader_random_text(text):
    with pytest.raises(CrossDistillError):
        parse_info(text)


@FAST
@given(key=st.sampled_from(DOC_KEYS), value=json_values)
def test_spec_loader_one_field_replaced(key, value):
    doc = dict(VALID_DOC, **{key: value})
    try:
        info = parse_info(json.dumps(doc))
    except CrossDistillError:
        return
    assert info.model == doc["model"]


@FAST
@given(spec=st.dictionaries(st.sampled_from(["num_classes", "channels", "mid_channels", "x"]), json_values, max_size=3))
def test_forged_spec_is_refused_without_building_it(spec):
    """A forged spec (any constructor arguments) in an otherwise valid file never builds a model
    that differs from the tensors, and never fails with anything but our error."""
    import safetensors.torch as st_torch

    tensors = st_torch.load_file(str(_DIR / "valid.safetensors"))
    doc = dict(VALID_DOC, spec=spec)
    path = _DIR / "forged.safetensors"
    st_torch.save_file(tensors, str(path), metadata={"crossdistill": json.dumps(doc)})
    try:
        model = load(path)
    except CrossDistillError:
        return
    assert model.spec() == VALID_DOC["spec"]
