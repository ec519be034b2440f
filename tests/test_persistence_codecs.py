"""The artifact codecs of crossdistill.persistence: files of format version 1 written before
persistence was split into codecs still load and re-save identically, and a new codec plugs in
with nothing but its registry entry."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pytest
import safetensors.torch as st_torch
import torch
from safetensors import safe_open
from torch import nn

import crossdistill
from crossdistill.errors import CrossDistillError
from crossdistill.models import create_model, load_checkpoint, load_model
from crossdistill.persistence import bitpack, codecs, parse_info, read_info
from crossdistill.persistence.codecs import ArtifactCodec, Encoded, check_registry
from crossdistill.persistence.spec import DOCUMENT_KEYS

# Written by the single-module persistence.py (before the codecs) from a fashion_cnn with
# channels [4, 8, 4]: `teacher` has no artifacts; `all_codecs` is lowrank+quant (3 bits) with
# masks added on conv1 (stored as a tensor) and fc (the non-zero pattern). `expected` holds an
# input batch `x` and both models' logits on it.
GOLDEN = Path(__file__).parent / "data" / "persistence_v1"
FILES = ["teacher", "all_codecs"]
VERSION_KEYS = ("crossdistill_version", "torch_version")


def _header(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["crossdistill"])


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return st_torch.load_file(str(GOLDEN / "expected.safetensors"))


@pytest.mark.parametrize("name", FILES)
def test_version_1_files_load_to_the_same_outputs(name, expected):
    path = GOLDEN / f"{name}.safetensors"
    for model in (crossdistill.load(path), load_model(path)):
        with torch.no_grad():
            assert torch.equal(model(expected["x"]), expected[name])
    assert set(load_checkpoint(path).state_dict) == set(crossdistill.load(path).state_dict())


def test_version_1_artifacts_come_back():
    model = crossdistill.load(GOLDEN / "all_codecs.safetensors")
    assert set(model.crossdistill_lowrank) == {"conv2", "conv3"}
    assert set(model.crossdistill_quant) == {"conv1", "conv2.0", "conv2.1", "conv3.0", "conv3.1", "fc"}
    assert {e["bits"] for e in model.crossdistill_quant.values()} == {3}
    assert set(model.crossdistill_masks) == {"conv1", "fc"}
    # "nonzero" masks are read off the weights after the codes are dequantised into them.
    assert torch.equal(model.crossdistill_masks["fc"], model.fc.weight != 0) and bool(model.crossdistill_masks["fc"].any())
    stored = st_torch.load_file(str(GOLDEN / "all_codecs.safetensors"))["__crossdistill__.mask.conv1"]
    assert torch.equal(model.crossdistill_masks["conv1"], stored)
    info = read_info(GOLDEN / "all_codecs.safetensors")
    assert info.masks == {"conv1": "tensor", "fc": "nonzero"} and info.lowrank["conv3"] == {"rank": 2, "kind": "conv"}
    assert info.quant["fc"] == {"bits": 3, "scheme": "asymmetric"} and "fc.weight" in info.omitted


@pytest.mark.parametrize("name", FILES)
def test_version_1_files_resave_identically(tmp_path, name):
    old = GOLDEN / f"{name}.safetensors"
    new = crossdistill.save(crossdistill.load(old), tmp_path / "m.safetensors")
    old_doc, new_doc = _header(old), _header(new)
    # Version 1 files were written before the tensors' checksum; resaved, they get one, last.
    assert list(new_doc)[-1] == "sha256" and "sha256" not in old_doc
    new_doc.pop("sha256")
    # The versions are those of the writer; everything else, key order included, is the model's,
    # but for quantization codes, which were stored a byte each and are bit-packed now.
    assert list(new_doc) == list(old_doc)
    quant = old_doc.get("quant", {})
    assert new_doc.get("quant", {}) == {layer: {**m, "packed": True} for layer, m in quant.items()}
    # ... and such a file is of format version 2, which older readers refuse by name.
    assert new_doc["format_version"] == (2 if quant else 1)
    assert {k: v for k, v in new_doc.items() if k not in VERSION_KEYS + ("quant", "format_version")} == {
        k: v for k, v in old_doc.items() if k not in VERSION_KEYS + ("quant", "format_version")}
    old_t, new_t = st_torch.load_file(str(old)), st_torch.load_file(str(new))
    assert list(new_t) == list(old_t)
    codes = {f"__crossdistill__.quant.{layer}.qcodes": m for layer, m in quant.items()}
    for key in old_t:
        if key in codes:  # a 3-bit asymmetric code per weight, 3 bits each now
            assert new_t[key].numel() == bitpack.packed_length(old_t[key].numel(), codes[key]["bits"])
            unpacked = bitpack.unpack(new_t[key], codes[key]["bits"], 0, tuple(old_t[key].shape), old_t[key].dtype)
            assert torch.equal(unpacked, old_t[key])
        else:
            assert torch.equal(new_t[key], old_t[key]) and new_t[key].dtype == old_t[key].dtype
    again = crossdistill.save(crossdistill.load(new), tmp_path / "again.safetensors")
    assert again.read_bytes() == new.read_bytes()  # and the same bytes each time


def test_codecs_read_the_attributes_their_methods_write():
    from crossdistill.compression.low_rank import LOWRANK_ATTR
    from crossdistill.compression.quantization import QUANT_ATTR
    from crossdistill.compression.weight_sparsity import MASKS_ATTR

    from crossdistill.persistence.codecs.slim import ATTR as SLIM_ATTR

    attrs = {c.name: c.attr for c in codecs.CODECS if c.attr}  # the buffers codec reads torch's own record
    assert attrs == {"channel_groups": SLIM_ATTR, "lowrank": LOWRANK_ATTR, "quant": QUANT_ATTR, "masks": MASKS_ATTR}


def test_registry_refuses_clashing_codecs():
    class Named(ArtifactCodec):
        def __init__(self, name: str, prefix: str = "") -> None:
            self.name, self.tensor_prefix = name, prefix

    check_registry(codecs.CODECS, DOCUMENT_KEYS)
    with pytest.raises(ValueError, match="distinct names"):
        check_registry((Named("a"), Named("a", "b")))
    with pytest.raises(ValueError, match="distinct names"):
        check_registry((Named("spec"),), DOCUMENT_KEYS)
    with pytest.raises(ValueError, match="overlap"):
        check_registry((Named("a", "x"), Named("b", "x")))


# -- a codec added from outside ---------------------------------------------------------------------


class OffsetCodec(ArtifactCodec):
    """A made-up artifact: `model.toy_offsets = {layer: tensor}`, one tensor per layer."""

    name = "toy"
    attr = "toy_offsets"

    def encode(self, model: nn.Module) -> Encoded | None:
        offsets = getattr(model, self.attr, None)
        if not offsets:
            return None
        return {layer: {"n": int(t.numel())} for layer, t in offsets.items()}, dict(offsets)

    def tensor_keys(self, metadata: Mapping[str, Any]) -> set[str]:
        return set(metadata)

    def decode(self, model: nn.Module, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        missing = sorted(set(metadata) - set(tensors))
        if missing:
            raise CrossDistillError(f"toy offsets of {missing} are missing")
        setattr(model, self.attr, {layer: tensors[layer] for layer in metadata})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("fashion_cnn", channels=[2, 3, 2])


def test_a_registered_codec_round_trips_without_touching_persistence(tmp_path, monkeypatch):
    plain = crossdistill.save(_model(), tmp_path / "plain.safetensors")
    monkeypatch.setattr(codecs, "CODECS", codecs.CODECS + (OffsetCodec(),))
    model = _model()
    model.toy_offsets = {"fc": torch.arange(10.0)}
    path = crossdistill.save(model, tmp_path / "toy.safetensors")
    doc = _header(path)
    assert doc["toy"] == {"fc": {"n": 10}} and list(doc)[-3:] == ["toy", "omitted", "sha256"]
    assert read_info(path).toy == {"fc": {"n": 10}}
    back = crossdistill.load(path)
    assert torch.equal(back.toy_offsets["fc"], torch.arange(10.0))
    # A model without the artifact: no entry, so the file is what it was before the codec.
    assert crossdistill.save(_model(), tmp_path / "again.safetensors").read_bytes() == plain.read_bytes()

    def drop(t):
        t.pop("__crossdistill__.toy.fc")

    t = st_torch.load_file(str(path))
    drop(t)
    doc.pop("sha256")  # a file without the checksum (which would refuse it first): the codec's own check
    st_torch.save_file(t, str(tmp_path / "bad.safetensors"), metadata={"crossdistill": json.dumps(doc)})
    with pytest.raises(CrossDistillError, match=r"bad\.safetensors: toy offsets of \['fc'\] are missing"):
        crossdistill.load(tmp_path / "bad.safetensors")


def test_a_file_with_an_unknown_codecs_tensors_is_refused(tmp_path, monkeypatch):
    # What a reader without the codec does with the file: its tensors are stray, not ignored.
    monkeypatch.setattr(codecs, "CODECS", codecs.CODECS + (OffsetCodec(),))
    model = _model()
    model.toy_offsets = {"fc": torch.arange(10.0)}
    path = crossdistill.save(model, tmp_path / "toy.safetensors")
    monkeypatch.undo()
    with pytest.raises(CrossDistillError, match=r"unexpected tensors __crossdistill__\.toy\.fc"):
        crossdistill.load(path)


def test_document_without_codec_entries_parses_to_empty_artifacts():
    doc = read_info(GOLDEN / "teacher.safetensors").to_json()
    for codec in codecs.CODECS:
        doc.pop(codec.name, None)  # a codec that is not always written may be absent already
    info = parse_info(json.dumps(doc))
    assert info.artifacts == {c.name: {} for c in codecs.CODECS} and info.quant == {}
    with pytest.raises(AttributeError):
        info.not_a_codec  # noqa: B018
