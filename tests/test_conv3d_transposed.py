"""Conv3d and transposed convs (1-3 d) are solved like any conv: their unfolded patches and
weight matrix give torch's own output, the closed form is the minimiser of the loss torch's
forward computes, channel groups they read are pruned, every method reaches them, and their
students save, load and export. A U-Net's up-sampling layers and the widest groups they read
were left whole before."""
from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.capture import dense_weight_matrix, patches, set_weight_matrix, weight_matrix
from crossdistill.objectives import OBJECTIVES
from crossdistill.problem_moments import ProblemAccumulator

LAYERS = {
    "conv3d": (lambda: nn.Conv3d(3, 5, 3, padding=1), (2, 3, 4, 6, 5)),
    "conv3d-strided-dilated": (lambda: nn.Conv3d(3, 5, (1, 3, 2), stride=(1, 2, 2), dilation=(1, 1, 2)),
                               (2, 3, 3, 9, 8)),
    "conv3d-same-even-grouped": (lambda: nn.Conv3d(4, 6, 2, padding="same", groups=2), (2, 4, 3, 5, 6)),
    "transposed2d-up2": (lambda: nn.ConvTranspose2d(4, 6, 2, stride=2), (2, 4, 5, 7)),
    "transposed2d-output-padding": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
                                    (2, 4, 5, 7)),
    "transposed2d-dilated-uneven": (lambda: nn.ConvTranspose2d(4, 6, (3, 4), stride=(2, 3), padding=(2, 1),
                                                               dilation=(2, 1)), (2, 4, 5, 7)),
    "transposed2d-padding-beyond-kernel": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=3), (2, 4, 6, 7)),
    "transposed2d-grouped": (lambda: nn.ConvTranspose2d(4, 6, 3, padding=1, groups=2), (2, 4, 5, 7)),
    "transposed1d": (lambda: nn.ConvTranspose1d(4, 6, 4, stride=2, padding=1), (2, 4, 9)),
    "transposed3d": (lambda: nn.ConvTranspose3d(4, 6, 2, stride=2), (2, 4, 3, 4, 5)),
}


def _no_bias_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    params = {"weight": layer.weight if weight is None else weight}
    if layer.bias is not None:
        params["bias"] = torch.zeros_like(layer.bias)
    return torch.func.functional_call(layer, params, (x,))


@pytest.mark.parametrize("key", list(LAYERS))
def test_patches_and_weight_matrix_give_torchs_own_output(key):
    torch.manual_seed(0)
    make, shape = LAYERS[key]
    layer = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    y = _no_bias_output(layer, x)
    torch.testing.assert_close((dense_weight_matrix(layer) @ patches(layer, x)).reshape(y.shape), y)
    before = layer.weight.detach().clone()
    set_weight_matrix(layer, weight_matrix(layer).clone())  # the inverse of weight_matrix
    assert torch.equal(layer.weight, before)


@pytest.mark.parametrize("key", list(LAYERS))
def test_the_closed_form_minimises_the_loss_torchs_forward_computes(key):
    """No-cross loss ||W_t * x_t - W * x_s||² through the layer's own forward: the problem's loss
    equals it (per output position), and the solve's weight, written back, has zero gradient."""
    torch.manual_seed(0)
    make, shape = LAYERS[key]
    layer = make().double()
    x_t = torch.randn(shape, dtype=torch.float64)
    x_s = x_t + 0.5 * torch.randn(shape, dtype=torch.float64)
    acc = ProblemAccumulator(layer, weight_matrix(layer), OBJECTIVES["nocross"]().terms())
    acc.add(x_t, x_s)
    problems = acc.finish_groups()
    target = _no_bias_output(layer, x_t).detach()
    positions = target.numel() // target.shape[1]

    def torch_loss(w: torch.Tensor) -> torch.Tensor:
        return (target - _no_bias_output(layer, x_s, w)).pow(2).sum() / positions

    rows = weight_matrix(layer).shape[0] // len(problems)
    w_rand = torch.randn_like(weight_matrix(layer))
    teacher_weight = layer.weight.detach().clone()
    trial = make().double()
    set_weight_matrix(trial, w_rand)
    summed = sum(p.loss(w_rand[g * rows:(g + 1) * rows]) for g, p in enumerate(problems))
    # The accumulator sums in float32 (as for every layer): agreement to its precision.
    assert summed == pytest.approx(float(torch_loss(trial.weight.detach())), rel=1e-5)
    solved = torch.cat([torch.linalg.solve(p.H, p.B.T).T for p in problems])
    set_weight_matrix(trial, solved)
    def grad_norm(weight: torch.Tensor) -> float:
        weight = weight.detach().clone().requires_grad_(True)
        return float(torch.autograd.grad(torch_loss(weight), weight)[0].norm())

    assert grad_norm(trial.weight) < 1e-4 * grad_norm(teacher_weight)
    assert float(torch_loss(trial.weight.detach())) < float(torch_loss(teacher_weight))


MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self, w=8, classes=4):
            super().__init__()
            self.e1, self.e2, self.e3 = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
            self.pool = nn.MaxPool2d(2)
            self.up2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), block(4 * w, 2 * w)
            self.up1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), block(2 * w, w)
            self.head = nn.Conv2d(w, classes, 1)

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(self.pool(a))
            c = self.e3(self.pool(b))
            d = self.d2(torch.cat([self.up2(c), b], 1))
            return self.head(self.d1(torch.cat([self.up1(d), a], 1)))

    def unet():
        torch.manual_seed(0)
        return UNet()

    def video():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1, bias=False), nn.BatchNorm3d(8), nn.ReLU(),
            nn.Conv3d(8, 16, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(16), nn.ReLU(),
            nn.Conv3d(16, 16, 2, padding="same", bias=False), nn.BatchNorm3d(16), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 5))
""")


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    from crossdistill.models.user import build_user_model

    path = tmp_path_factory.mktemp("models") / "nets.py"
    path.write_text(MODELS)
    out = {}
    for name, shape in (("unet", (3, 16, 16)), ("video", (3, 4, 8, 8))):
        model = build_user_model(f"{path}:{name}")
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):  # statistics that are not the identity
                    m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                    m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        out[name] = (model.eval(), f"{path}:{name}", shape)
    return out


def _inputs(shape, seed):
    return torch.randn(24, *shape, generator=torch.Generator().manual_seed(seed))


def _relative_error(student, teacher, x):
    with torch.no_grad():
        t = teacher(x)
        return float((student(x) - t).norm() / t.norm())


def test_a_unets_up_sampling_layers_are_solved_and_the_groups_they_read_pruned(factories):
    teacher, _, shape = factories["unet"]
    x, held_out = _inputs(shape, 0), _inputs(shape, 1)
    solved, report = crossdistill.compress(teacher, x, n_samples=24, keep=0.5, show_progress=False)
    pruned, _ = crossdistill.compress(teacher, x, n_samples=24, keep=0.5, solver="prune-only", show_progress=False)
    assert {"up1", "up2"} <= {row["name"] for row in report["layers"]}
    assert solved.up2.in_channels == 16 and solved.up1.in_channels == 8  # the bottleneck groups, halved
    whole = [g["reason"] for g in report["channel_groups"]["left_whole"]]
    assert not any("ConvTranspose2d" in r for r in whole)
    assert _relative_error(solved, teacher, held_out) < 0.7 * _relative_error(pruned, teacher, held_out)


def test_a_conv3d_model_is_pruned_and_reconstructed(factories):
    teacher, _, shape = factories["video"]
    x, held_out = _inputs(shape, 0), _inputs(shape, 1)
    solved, report = crossdistill.compress(teacher, x, n_samples=24, keep=0.5, show_progress=False)
    pruned, _ = crossdistill.compress(teacher, x, n_samples=24, keep=0.5, solver="prune-only", show_progress=False)
    assert solved[3].in_channels == 4 and solved[6].in_channels == 8
    # The feature maps before the pooling (the pooled logits average most of the error away).
    assert _relative_error(solved[:9], teacher[:9], held_out) < _relative_error(pruned[:9], teacher[:9], held_out)


def _twins(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A Conv2d net and the Conv3d net that computes the same on inputs of depth 1."""
    torch.manual_seed(seed)
    flat = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(12, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    deep = nn.Sequential(nn.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1)), nn.ReLU(),
                         nn.Conv3d(8, 12, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.ReLU(),
                         nn.Conv3d(12, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    with torch.no_grad():
        for a, b in zip(flat, deep):
            if isinstance(a, nn.Conv2d):
                b.weight.copy_(a.weight.unsqueeze(2))
                b.bias.copy_(a.bias)
            elif isinstance(a, nn.Linear):
                b.load_state_dict(a.state_dict())
    return flat.eval(), deep.eval()


def test_a_conv3d_net_on_depth_one_is_compressed_exactly_as_its_conv2d_twin():
    flat, deep = _twins()
    x = torch.randn(20, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(deep(x.unsqueeze(2)), flat(x))
    s2, r2 = crossdistill.compress(flat, x, n_samples=20, keep=0.5, show_progress=False)
    s3, r3 = crossdistill.compress(deep, x.unsqueeze(2), n_samples=20, keep=0.5, show_progress=False)
    assert [g["kept"] for g in r3["channel_groups"]["pruned"]] == [g["kept"] for g in r2["channel_groups"]["pruned"]]
    for a, b in zip(s2, s3):
        if isinstance(a, nn.Conv2d):
            torch.testing.assert_close(b.weight.squeeze(2), a.weight, rtol=1e-4, atol=1e-5)
    held_out = torch.randn(20, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(s3(held_out.unsqueeze(2)), s2(held_out), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method, settings, layer, status", [
    ("sparsity", {"sparsity": 0.5}, "up2", "pruned"),
    ("lowrank", {"rank_ratio": 0.5}, "up2", "factorised"),
    ("quant", {"bits": 4}, "up2", "quantized"),
    ("sparsity", {"sparsity": 0.5}, "3", "pruned"),
    ("quant", {"bits": 4}, "3", "quantized"),
    ("lowrank", {"rank_ratio": 0.5}, "3", "factorised"),
])
def test_every_method_reaches_conv3d_and_transposed_layers(factories, method, settings, layer, status):
    name = "unet" if layer.startswith("up") else "video"
    teacher, _, shape = factories[name]
    with pytest.warns(UserWarning, match="transposed conv") if status == "skipped" else _nothing():
        student, report = crossdistill.compress(teacher, _inputs(shape, 0), n_samples=24, method=method,
                                                show_progress=False, **settings)
    row = {e["name"]: e for e in report[method]["layers"]}[layer]
    assert row["status"] == status
    if status == "skipped":
        assert "transposed conv" in row["reason"]
    assert _relative_error(student, teacher, _inputs(shape, 1)) < 0.3
    if method == "sparsity":
        w = student.get_submodule(layer).weight
        assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("name, settings", [("unet", {"keep": 0.5}), ("unet", {"method": "lowrank", "rank_ratio": 0.5}),
                                            ("unet", {"method": "quant", "bits": 4}), ("video", {"keep": 0.5})])
def test_the_students_save_load_and_export(factories, tmp_path, name, settings):
    pytest.importorskip("onnxruntime")
    teacher, factory, shape = factories[name]
    x = _inputs(shape, 0)
    student, _ = crossdistill.compress(teacher, x, n_samples=24, show_progress=False, **settings)
    student.crossdistill_factory = factory
    path = crossdistill.save(student, tmp_path / "s.safetensors")
    with torch.no_grad():
        assert torch.equal(crossdistill.load(path)(x), student(x))
    from crossdistill.export import export

    assert export(path, "onnx", tmp_path / "s.onnx").max_abs_diff <= 1e-4


def test_l1_scores_a_transposed_producer_by_its_output_channels():
    """A transposed conv keeps its weight as (in, out, k…): its filters' L1 norms are over dim 1.
    Read over dim 0 they scored input channels (wrong units, or an index error)."""
    from crossdistill.compression.graph_plan import _select_l1, group_magnitude

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2, bias=False)
            self.conv = nn.Conv2d(4, 3, 1, bias=False)

        def forward(self, x):
            return self.conv(self.up(x))

    model = Up()
    with torch.no_grad():
        model.up.weight.fill_(0.01)
        model.up.weight[:, 1] = 1.0  # output channels 1 and 3 carry the weight
        model.up.weight[:, 3] = 2.0
        model.conv.weight.fill_(0.01)
    from crossdistill.compression.graph_channels import channel_groups

    (group,) = [g for g in channel_groups(model, torch.randn(1, 8, 4, 4)) if g.width == 4]
    assert _select_l1(group, model, 2) == [1, 3]
    assert group_magnitude(group, model, 2) == [1, 3]


def test_large_patches_are_taken_a_few_images_at_a_time_with_the_same_moments(monkeypatch):
    """A Conv3d's or a transposed conv's patches of one image can take tens of MB: 16 images a
    chunk took 5.5 GB for one ConvTranspose3d layer. Fewer images a chunk, the same sums."""
    from crossdistill import moments

    torch.manual_seed(0)
    layer = nn.ConvTranspose3d(4, 6, 3, stride=2, padding=1).double()
    x_t = torch.randn(16, 4, 3, 4, 5, dtype=torch.float64)
    x_s = x_t + 0.3 * torch.randn_like(x_t)
    one = patches(layer, x_t[:1]).numel() * 4
    whole = moments.MomentAccumulator(layer)
    whole.add(x_t, x_s)
    monkeypatch.setattr(moments, "PATCH_BYTES", 3 * one)  # room for 3 images: chunks of 2
    assert moments.images_per_chunk(layer, x_t, 16) == 2
    assert moments.images_per_chunk(nn.Conv2d(4, 6, 3), torch.randn(16, 4, 8, 8), 16) == 16  # 2-d: as before
    split = moments.MomentAccumulator(layer)
    split.add(x_t, x_s)
    for a, b in zip(whole.finish_groups(), split.finish_groups()):
        for name in ("tt", "ss", "ts"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)


class _UpWithOutputSize(nn.Module):
    """A transposed conv called with output_size= to match its skip connection (odd sizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.e, self.down = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up, self.d = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1), nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.e(x))
        b = torch.relu(self.down(a))
        return self.d(torch.cat([self.up(b, output_size=a.shape[2:]), a], 1))


def test_a_factorised_transposed_conv_takes_output_size():
    """Low rank swapped the layer for two factors that refused output_size=: the student failed
    on its first forward, after the whole solve."""
    torch.manual_seed(0)
    teacher, x = _UpWithOutputSize().eval(), torch.randn(16, 1, 15, 15)
    student, report = crossdistill.compress(teacher, x, n_samples=16, method="lowrank", rank_ratio=0.5,
                                            eval_data=x, show_progress=False)
    assert {e["name"]: e["status"] for e in report["lowrank"]["layers"]}["up"] == "factorised"
    assert student(x).shape == teacher(x).shape and report["agreement"]["output_error"] < 0.1


def test_the_output_head_of_a_decoder_is_the_layer_its_forward_runs_last():
    """A generator projects its latent with a Linear first, then up-samples: sparsity kept the
    Linear dense as 'the classifier' and sparsified the real output layer."""

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 16 * 4 * 4)
            self.up1, self.up2 = nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.ConvTranspose2d(8, 1, 4, 2, 1)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc(z)).reshape(-1, 16, 4, 4)
            return torch.tanh(self.up2(torch.relu(self.up1(h))))

    torch.manual_seed(0)
    _, report = crossdistill.compress(Generator().eval(), torch.randn(32, 8), n_samples=32, method="sparsity",
                                      sparsity=0.5, show_progress=False)
    rows = {e["name"]: e for e in report["sparsity"]["layers"]}
    assert rows["up2"]["reason"] == "the last layer, the output head (prune_last=False)"
    assert rows["fc"]["status"] == "pruned"


def test_a_volume_net_exports_with_free_depth_height_and_width(tmp_path):
    pytest.importorskip("onnxruntime")
    from crossdistill.export import export_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose3d(4, 1, 2, stride=2)).eval()
    result = export_model(net, tmp_path / "v.onnx", "onnx", torch.randn(2, 1, 6, 6, 6))
    assert result.free_axes == ("depth", "height", "width")


def test_the_command_line_points_volumes_to_the_python_api(tmp_path, capsys):
    import numpy as np

    from crossdistill.cli.main import main

    np.savez(tmp_path / "vol.npz", x=np.zeros((4, 1, 4, 4, 4), np.float32), y=np.arange(4) % 2)
    assert main(["compress", "--model", "fashion_cnn", "--data", str(tmp_path / "vol.npz"), "--n-samples", "2",
                 "--quiet", "--out", str(tmp_path / "run")]) != 0
    assert "volumes and video clips (N, C, D, H, W) are read by the Python API only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings", [{"keep": 0.5}, {"method": "sparsity", "sparsity": 0.5},
                                      {"method": "lowrank", "rank_ratio": 0.5}])
def test_the_fine_tune_trains_and_hints_the_transposed_layers_it_changed(factories, settings):
    """compressed_layers knew no transposed conv: a decoder's changed up-convolutions were neither
    trained under finetune_trainable 'pruned' nor hinted (a net of transposed convs alone had
    'no layer that differs from its teacher's')."""
    from crossdistill.compressed_layers import compressed_layers

    teacher, _, shape = factories["unet"]
    x = _inputs(shape, 0)
    student, report = crossdistill.compress(teacher, x, labels=torch.arange(24) % 4, n_samples=24,
                                            finetune_epochs=1, finetune_trainable="pruned", show_progress=False,
                                            **settings)
    changed = compressed_layers(student, teacher)
    assert {"up1", "up2"} <= set(changed)
    assert report["finetune"]["steps"] > 0
