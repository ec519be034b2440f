"""Quantization codes are bit-packed in the saved file: `bits` bits a weight, so the file shrinks
with the bit width as `model_size` says (they were stored a byte each: a 2-bit student's file
was 3.7x its reported size)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.errors import CrossDistillError
from crossdistill.persistence import bitpack


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("low", [0, "symmetric"])
def test_codes_come_back_from_their_packed_bytes(bits, low, monkeypatch):
    monkeypatch.setattr(bitpack, "_STEP", 64)  # small steps: the step boundaries are crossed
    low = -(2 ** (bits - 1) - 1) if low == "symmetric" else 0
    gen = torch.Generator().manual_seed(bits)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 200, 1001):
        codes = torch.randint(low, low + 2 ** bits - (1 if low else 0), (n,), generator=gen)
        packed = bitpack.pack(codes, bits, low)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-n * bits // 8)
        back = bitpack.unpack(packed, bits, low, (n,), torch.int8 if low else torch.uint8)
        assert torch.equal(back.long(), codes)


def test_codes_out_of_range_or_bytes_of_the_wrong_length_are_refused():
    with pytest.raises(CrossDistillError, match="do not fit in 2 bits"):
        bitpack.pack(torch.tensor([0, 4]), 2, 0)
    with pytest.raises(CrossDistillError, match="must be 3 bytes"):
        bitpack.unpack(torch.zeros(2, dtype=torch.uint8), 3, 0, (8,), torch.uint8)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def test_the_saved_file_shrinks_with_the_bits_as_the_report_says(tmp_path):
    model = _net().eval()
    x = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sizes, reported = {}, {}
    for bits in (2, 8):
        student, report = crossdistill.compress(model, x, n_samples=30, method="quant", bits=bits,
                                                show_progress=False)
        student.crossdistill_factory = f"{__file__}:_net"
        path = crossdistill.save(student, tmp_path / f"q{bits}.safetensors")
        sizes[bits], reported[bits] = path.stat().st_size, report["model_size"]["total"]
        loaded = crossdistill.load(path)
        with torch.no_grad():
            assert torch.equal(loaded(x), student(x))
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    # 6 bits fewer per weight, in the file as in the report.
    assert reported[8] - reported[2] == pytest.approx(weights * 6 / 8, abs=8)
    assert sizes[8] - sizes[2] == pytest.approx(weights * 6 / 8, abs=64)


def test_the_reports_teacher_size_counts_what_the_students_size_counts():
    """summary.txt's teacher size was params x 4 beside a student size that counts BatchNorm
    statistics too: a low-rank student with fewer parameters showed a larger size."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.randn(20, 3, 8, 8)
    _, report = crossdistill.compress(teacher, x, n_samples=20, method="quant", bits=8, eval_data=x,
                                      show_progress=False)
    floats = sum(t.numel() for k, t in list(teacher.named_parameters()) + list(teacher.named_buffers())
                 if not k.endswith("num_batches_tracked"))
    assert report["teacher"]["size_bytes"] == 4 * floats
    assert report["student"]["size_bytes"] == report["model_size"]["total"]
