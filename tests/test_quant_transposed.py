"""Transposed convs are quantized: one grid per output channel, which runs along dim 1 of their
weight (in, out/groups, k…), and their codes save and load (format version 3). They were left in
float32, because the stored codes kept a grid per row of dim 0 (an input channel)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

import crossdistill
from crossdistill.capture import weight_matrix
from crossdistill.compression.quantization import QUANT_ATTR, attach_quant, dequantized_weight, quant_metadata, quant_tensors
from crossdistill.errors import CrossDistillError
from crossdistill.persistence import spec

UPS = {
    "2d": (lambda: nn.ConvTranspose2d(8, 6, 2, stride=2), 2),
    "2d-grouped": (lambda: nn.ConvTranspose2d(8, 6, 3, padding=1, groups=2), 2),
    "1d": (lambda: nn.ConvTranspose1d(8, 6, 4, stride=2, padding=1), 1),
    "3d": (lambda: nn.ConvTranspose3d(8, 6, 2, stride=2), 3),
}
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_SIZE = {1: (12,), 2: (6, 6), 3: (3, 4, 4)}


def up_net(key: str = "2d") -> nn.Module:
    make, d = UPS[key]
    torch.manual_seed(0)
    return nn.Sequential(_CONV[d](3, 8, 3, padding=1), nn.ReLU(), make(), nn.ReLU(), _CONV[d](6, 4, 1)).eval()


def up_net_grouped() -> nn.Module:
    return up_net("2d-grouped")


def _inputs(key: str, seed: int = 0) -> torch.Tensor:
    d = UPS[key][1]
    return torch.randn(24, 3, *_SIZE[d], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("key", list(UPS))
@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
def test_each_output_channel_of_a_transposed_conv_is_on_a_grid_of_its_own(key, scheme):
    teacher, x = up_net(key), _inputs(key)
    student, report = crossdistill.compress(teacher, x, n_samples=24, method="quant", bits=3, quant_scheme=scheme,
                                            show_progress=False)
    assert {e["name"]: e["status"] for e in report["quant"]["layers"]}["2"] == "quantized"
    layer, entry = student[2], getattr(student, QUANT_ATTR)["2"]
    assert torch.equal(dequantized_weight(entry), layer.weight.detach())
    rows = weight_matrix(layer)
    assert entry["scale"].shape == (6,)  # one per output channel, not one per input channel (8)
    for j, row in enumerate(rows):  # every weight of output channel j on its own 8-step grid
        steps = row.double() / float(entry["scale"][j])
        assert torch.allclose(steps, steps.round(), atol=1e-4), j
        assert len(torch.unique(steps.round())) <= 8
    with torch.no_grad():
        t = teacher(_inputs(key, 1))
        assert float((student(_inputs(key, 1)) - t).norm() / t.norm()) < 0.2


@pytest.mark.parametrize("key", ["2d", "2d-grouped"])
def test_a_quantized_transposed_conv_saves_loads_as_version_3(key, tmp_path):
    student, _ = crossdistill.compress(up_net(key), _inputs(key), n_samples=24, method="quant", bits=4,
                                       show_progress=False)
    student.crossdistill_factory = f"{__file__}:" + ("up_net" if key == "2d" else "up_net_grouped")
    path = crossdistill.save(student, tmp_path / "q.safetensors")
    with safe_open(str(path), "pt") as f:
        doc = json.loads(f.metadata()[spec.META_KEY])
    assert doc["format_version"] == 3 and doc["quant"]["2"]["transposed_groups"] == UPS[key][0]().groups
    assert "2.weight" in doc["omitted"]  # the codes are the weight
    loaded = crossdistill.load(path)
    x = _inputs(key, 1)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))


def test_a_file_without_a_quantized_transposed_conv_keeps_its_version(tmp_path):
    student, _ = crossdistill.compress(up_net(), _inputs("2d"), n_samples=24, method="quant", bits=4,
                                       quant_first=True, show_progress=False)
    del getattr(student, QUANT_ATTR)["2"]
    student.crossdistill_factory = f"{__file__}:up_net"
    path = crossdistill.save(student, tmp_path / "q.safetensors")
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()[spec.META_KEY])["format_version"] == 2


def test_a_reader_of_version_2_refuses_the_file(tmp_path, monkeypatch):
    student, _ = crossdistill.compress(up_net(), _inputs("2d"), n_samples=24, method="quant", bits=4,
                                       show_progress=False)
    student.crossdistill_factory = f"{__file__}:up_net"
    path = crossdistill.save(student, tmp_path / "q.safetensors")
    monkeypatch.setattr(spec, "FORMAT_VERSION", 2)
    with pytest.raises(CrossDistillError, match="format version 3.*reads up to version 2: upgrade"):
        crossdistill.load(path)


def test_a_record_made_for_another_kind_of_layer_is_refused():
    student, _ = crossdistill.compress(up_net(), _inputs("2d"), n_samples=24, method="quant", bits=4,
                                       show_progress=False)
    tensors, meta = quant_tensors(student), quant_metadata(student)
    assert meta["2"]["transposed_groups"] == 1 and "transposed_groups" not in meta["0"]
    plain = dict(meta, **{"2": {k: v for k, v in meta["2"].items() if k != "transposed_groups"}})
    with pytest.raises(CrossDistillError, match="'2'.*per output channel|'2'.*not for|'2'.*not a transposed"):
        attach_quant(up_net(), tensors, plain)
    swapped = dict(meta, **{"0": dict(meta["0"], transposed_groups=1)})
    with pytest.raises(CrossDistillError, match="'0'"):
        attach_quant(up_net(), tensors, swapped)
    for bad in (0, -1, True, "1"):
        with pytest.raises(CrossDistillError, match="transposed_groups"):
            attach_quant(up_net(), tensors, dict(meta, **{"2": dict(meta["2"], transposed_groups=bad)}))


def test_the_document_checks_transposed_groups():
    from crossdistill.persistence.codecs import DocumentError
    from crossdistill.persistence.codecs.quant import QuantCodec

    codec = QuantCodec()
    assert codec.validate({"a": {"bits": 4, "scheme": "symmetric", "transposed_groups": 2}})
    for bad in (0, "2", 1.5, False):
        with pytest.raises(DocumentError, match="transposed_groups"):
            codec.validate({"a": {"bits": 4, "scheme": "symmetric", "transposed_groups": bad}})


def square_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, stride=2), nn.ReLU(),
                         nn.Conv2d(8, 4, 1)).eval()


def test_a_square_transposed_convs_record_of_another_kind_is_refused_on_load_and_on_save(tmp_path):
    """In == out channels: one scale per row of either axis has the right count, so only the
    record's kind tells a grid along dim 0 from one along dim 1."""
    x = torch.randn(24, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    student, _ = crossdistill.compress(square_net(), x, n_samples=24, method="quant", bits=4, show_progress=False)
    tensors, meta = quant_tensors(student), quant_metadata(student)
    plain = dict(meta, **{"2": {k: v for k, v in meta["2"].items() if k != "transposed_groups"}})
    with pytest.raises(CrossDistillError, match="'2'.*made for a layer other than a transposed conv"):
        attach_quant(square_net(), tensors, plain)
    entry = getattr(student, QUANT_ATTR)["2"]
    del entry["transposed_groups"]  # a record built without the layer's kind
    student.crossdistill_factory = f"{__file__}:square_net"
    with pytest.raises(CrossDistillError, match="made for a layer other than a transposed conv"):
        crossdistill.save(student, tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()
