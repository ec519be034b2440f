"""A model whose forward takes several inputs (token ids and an attention mask) compresses through
`StackedInputs`: the inputs travel as one tensor, stacked on dim 1, through the draw, capture,
fine-tune, evaluation, saving and export."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill import StackedInputs
from crossdistill.errors import CrossDistillError

VOCAB, LENGTH = 60, 12


class MaskedText(nn.Module):
    """Mean over the tokens the mask keeps; the padded positions hold random ids, so a model that
    ignored its mask (or took the mask for ids) would answer differently."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.fc1, self.fc2 = nn.Linear(16, 48), nn.Linear(48, 48)
        self.head = nn.Linear(48, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc2(torch.relu(self.fc1(self.embed(input_ids)))))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))


def make() -> StackedInputs:
    """The factory a saved student is rebuilt from."""
    return StackedInputs(MaskedText(), names=("input_ids", "attention_mask"))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _sentences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, class): a keyword id 0-3 (the class) among the first 6 tokens, 6-12 tokens kept,
    random ids (keywords among them) behind the mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, LENGTH), generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    ids[torch.arange(n), torch.randint(0, 6, (n,), generator=gen)] = y
    kept = torch.randint(6, LENGTH + 1, (n,), generator=gen)
    mask = (torch.arange(LENGTH)[None, :] < kept[:, None]).long()
    noise = torch.randint(0, VOCAB, (n, LENGTH), generator=gen)
    return torch.where(mask.bool(), ids, noise), mask, y


def _trained() -> StackedInputs:
    model = make()
    ids, mask, y = _sentences(400, 0)
    x = StackedInputs.stack(ids, mask)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_a_two_input_model_is_pruned_from_a_few_sentences_better_than_by_pruning_alone():
    teacher = _trained()
    ids, mask, y = _sentences(200, 1)
    t_ids, t_mask, t_y = _sentences(300, 2)
    train, test = StackedInputs.stack(ids, mask), StackedInputs.stack(t_ids, t_mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left whole are named in a warning
        student, report = crossdistill.compress(teacher, train, labels=y, shots=5, keep=0.5, finetune_epochs=2,
                                                eval_data=(test, t_y), show_progress=False)
        _, pruned_only = crossdistill.compress(teacher, train, labels=y, shots=5, keep=0.5, solver="prune-only",
                                               eval_data=(test, t_y), show_progress=False)
    assert report["teacher"]["top1"] > 80.0  # the teacher learned the task, mask and all
    assert report["model"] == "MaskedText"
    assert report["channel_groups"]["pruned"] and report["student"]["flops"] < report["teacher"]["flops"]
    assert {row["name"] for row in report["layers"]} <= {"model.fc1", "model.fc2", "model.head"}
    assert report["agreement"]["output_error"] < pruned_only["agreement"]["output_error"]
    assert report["finetune"]["augment"] == "off: token ids have no random views"
    # The student still reads its mask: what lies behind it does not change the answer.
    renoised = torch.where(t_mask.bool(), t_ids, (t_ids + 7) % VOCAB)
    with torch.no_grad():
        assert torch.allclose(student(StackedInputs.stack(renoised, t_mask)), student(test), atol=1e-5)
        assert torch.equal(student(test), student.model(input_ids=t_ids, attention_mask=t_mask))


def test_a_stacked_student_saves_loads_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    from crossdistill.export import export_model

    teacher = _trained()
    ids, mask, y = _sentences(80, 1)
    x = StackedInputs.stack(ids, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student, _ = crossdistill.compress(teacher, x, labels=y, shots=4, keep=0.5, show_progress=False)
    student.crossdistill_factory = f"{__file__}:make"
    loaded = crossdistill.load(crossdistill.save(student, tmp_path / "text.safetensors"))
    assert loaded.model.fc1.out_features == student.model.fc1.out_features < teacher.model.fc1.out_features
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    assert export_model(loaded, tmp_path / "text.onnx", "onnx", x[:8]).max_abs_diff <= 1e-4
    # The graph's one input is the stack: the file says what is stacked where.
    import json

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "text.onnx")).metadata_props}
    assert json.loads(meta["crossdistill.stacked_inputs"]) == {"dim": 1, "names": list(loaded.names) if loaded.names else None,
                                                  "count": 2}


def test_inputs_given_apart_are_refused_with_the_way_to_stack_them():
    teacher = _trained()
    ids, mask, y = _sentences(40, 1)
    with pytest.raises(CrossDistillError, match=r"missing 1 required positional argument.*StackedInputs"):
        crossdistill.compress(teacher.model, ids, labels=y, shots=2, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"a dict of tensors \(keys \['attention_mask', 'input_ids'\]\).*"
                                                 r"StackedInputs"):
        crossdistill.compress(teacher.model, {"input_ids": ids, "attention_mask": mask}, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"differ in shape or dtype \(\(40, 12\) float32, \(40, 12\) int64\)"):
        StackedInputs.stack(ids, mask.float())
    with pytest.raises(CrossDistillError, match="two or more"):
        StackedInputs.stack(ids)
    with pytest.raises(CrossDistillError, match=r"3 stacked inputs for 2 names"):
        teacher(torch.stack([ids, mask, mask], 1))


def test_inputs_are_passed_in_order_without_names():
    seen = {}

    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            seen["a"], seen["b"] = a, b
            return a - b

    a, b = torch.randn(3, 5), torch.randn(3, 5)
    out = StackedInputs(Two())(StackedInputs.stack(a, b))
    assert torch.equal(seen["a"], a) and torch.equal(seen["b"], b) and torch.equal(out, a - b)


class TwoViews(nn.Module):
    """Two float inputs of one shape (an image and its depth map, say), one conv stem each."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
        self.mix = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mix(torch.relu(self.a(image) + self.b(depth))))
        return self.fc(h.mean((2, 3)))


def test_stacked_float_inputs_get_no_random_views_but_are_solved():
    teacher = StackedInputs(TwoViews()).eval()
    x = StackedInputs.stack(torch.randn(24, 3, 8, 8), torch.randn(24, 3, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student, report = crossdistill.compress(teacher, x, n_samples=16, keep=0.5, finetune_epochs=1,
                                                eval_data=x[16:], show_progress=False)
        _, pruned_only = crossdistill.compress(teacher, x, n_samples=16, keep=0.5, solver="prune-only",
                                               eval_data=x[16:], show_progress=False)
    # A crop-flip of the N×2×3×8×8 stack would move the two inputs as if they were one image's
    # channels; the fine-tune trains on them as they are and says so.
    assert report["finetune"]["augment"] == "off: stacked inputs (StackedInputs) have no random views"
    assert report["finetune"]["settings"]["augment"] is False
    # The sum a(image) + b(depth) is one channel group: both stems keep the same half.
    assert student.model.a.out_channels == student.model.b.out_channels == student.model.mix.in_channels == 8
    assert report["agreement"]["output_error"] < pruned_only["agreement"]["output_error"]


def test_the_command_line_refuses_a_stacked_model_with_the_way_out(tmp_path, capsys):
    """`compress --model file.py:make` for a StackedInputs model told the user to give
    --input-size, then that the images had the wrong shape: the CLI reads one input per sample."""
    import numpy as np

    from crossdistill.cli.main import main

    np.savez(tmp_path / "d.npz", x=np.zeros((20, 8, 8, 3), np.uint8), y=np.arange(20) % 2)
    code = main(["compress", "--model", f"{__file__}:make", "--data", str(tmp_path / "d.npz"), "--shots", "1",
                 "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "takes several inputs (crossdistill.StackedInputs)" in err and "--input-size" not in err
    assert not (tmp_path / "out").exists()
