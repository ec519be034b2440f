"""The layers a compression changed, for a model that declares no channel pairs (any user's
model): the fine-tune's trainable 'pruned' and its 'layers'/'blocks' hints find them by
comparing student and teacher, so the best fine-tune recipes work beyond the registry."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.compressed_layers import compressed_layers
from crossdistill.errors import CrossDistillError
from crossdistill.finetune import FinetuneSettings, finetune
from crossdistill.hints import PENULTIMATE, capture, hint_points, matching_points


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class UserNet(nn.Module):
    """Classifier defined first, a residual block, a hidden linear defined after the classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 10)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block(8)
        self.head = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.hidden = nn.Linear(12, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.hidden(self.head(self.block(self.stem(x))))))


def data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 10


def channel_student() -> tuple[nn.Module, nn.Module, dict]:
    teacher = UserNet().eval()
    x, y = data()
    student, report = crossdistill.compress(teacher, x, labels=y, shots=4, keep=0.5, show_progress=False)
    return teacher, student, report


def test_channel_pruned_user_model_changed_layers_are_the_resolved_readers():
    teacher, student, report = channel_student()
    resolved = [layer["name"] for layer in report["layers"] if "kept" in layer]
    assert resolved and set(compressed_layers(student, teacher)) == set(resolved)
    # Producers that only lost output channels (the stem's conv when its readers were pruned) are not in.
    assert "stem.0" not in compressed_layers(student, teacher)


def test_sparsity_low_rank_and_attention_changes_are_found():
    teacher = UserNet().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.block.conv2.weight[0].zero_()
    student.hidden = nn.Sequential(nn.Linear(12, 2, bias=False), nn.Linear(2, 16))  # replaced by factors
    assert compressed_layers(student, teacher) == ["block.conv2", "hidden"]
    att = nn.MultiheadAttention(8, 2)
    changed = copy.deepcopy(att)
    with torch.no_grad():
        changed.in_proj_weight[9].zero_()  # a row of k
    t, s = nn.ModuleDict({"att": att}), nn.ModuleDict({"att": changed})
    assert compressed_layers(s, t) == ["att"]
    with pytest.raises(CrossDistillError, match="differs from its teacher"):
        compressed_layers(t, copy.deepcopy(t))


def test_a_producer_that_lost_outputs_is_changed_only_when_a_kept_filter_changed():
    teacher, student, _ = channel_student()
    assert student.stem[0].out_channels < teacher.stem[0].out_channels
    with torch.no_grad():
        student.stem[0].weight[1, 0, 0, 0] += 1e-3  # as quantizing it after pruning would
    assert "stem.0" in compressed_layers(student, teacher)
    # A transposed conv's filters lie along its second axis.
    up = nn.ConvTranspose2d(4, 6, 3)
    kept = nn.ConvTranspose2d(4, 3, 3)
    with torch.no_grad():
        kept.weight.copy_(up.weight[:, [0, 2, 5]])
    t, s = nn.ModuleDict({"up": up}), nn.ModuleDict({"up": kept})
    with pytest.raises(CrossDistillError, match="differs from its teacher"):
        compressed_layers(s, t)  # the teacher's filters 0, 2, 5: unchanged
    with torch.no_grad():
        s.up.weight[0, 1] += 1e-3
    assert compressed_layers(s, t) == ["up"]


def test_heads_pruned_then_quantized_projections_are_changed_layers():
    torch.manual_seed(0)

    class Enc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.head = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            return self.head((h + self.attn(h, h, h, need_weights=False)[0]).mean(1))

    teacher, x, y = Enc().eval(), torch.randn(30, 8, 6), torch.arange(30) % 5
    for method, want in (("channels", {"attn.out_proj"}),
                         ("channels+quant", {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"})):
        student, _ = crossdistill.compress(teacher, x, labels=y, shots=4, keep=0.5, method=method,
                                           show_progress=False)
        assert {n for n in compressed_layers(student, teacher) if n.startswith("attn.")} == want


def test_trainable_pruned_and_layer_hints_on_a_user_model():
    teacher, student, _ = channel_student()
    ref = copy.deepcopy(student.state_dict())
    changed = compressed_layers(student, teacher)
    x, y = data()
    info = finetune(student, teacher, x[:20], y[:20],
                    FinetuneSettings(epochs=3, lr=1e-2, bn="frozen", hint_weight=1.0, hints="layers",
                                     trainable="pruned", batch_size=8))
    moved = {k.rpartition(".")[0] for k, v in student.state_dict().items() if not torch.equal(ref[k], v)}
    assert moved and moved <= set(changed)
    assert info["hint_points"] >= 1
    # Readers inside a block module are hinted at the block's output, those in a Sequential at their own.
    assert hint_points(student, teacher, "blocks") == ["block", "head.0", "hidden"]
    # The residual stream and head.0's outputs were slimmed too: only the hidden linear's output compares.
    assert matching_points(student, teacher, ["block", "head.0", "hidden"], x[:2]) == ["hidden"]


def test_penultimate_is_the_input_of_the_linear_run_last():
    model = UserNet().eval()
    x, _ = data(2)
    with torch.no_grad(), capture(model, [PENULTIMATE]) as feats:
        model(x)
    # fc (defined first, run last) reads 16 features; the hidden linear (defined last) reads 12.
    assert feats[PENULTIMATE].shape == (2, 16)


def test_hint_finetune_through_the_api_on_a_user_model():
    teacher = UserNet().eval()
    x, y = data()
    student, report = crossdistill.compress(teacher, x, labels=y, shots=4, keep=0.5, finetune_epochs=2,
                                            finetune_mode="hints", finetune_hints="blocks+penultimate",
                                            finetune_trainable="pruned", show_progress=False)
    assert report["finetune"]["hint_points"] >= 2
