"""Post-training quantization: grids, the GPTQ sweep against round to nearest, the quantized
model's stored form, and the channels+quant composite."""
import copy

import pytest
import torch
from torch import nn

from crossdistill.compression import create_method
from crossdistill.compression.composite import stage_solver_name
from crossdistill.compression.quantization import (
    QUANT_ATTR,
    Quantization,
    attach_quant,
    dequantize_into,
    dequantized_weight,
    model_size_bytes,
    quant_metadata,
    quant_tensors,
)
from crossdistill.config import CompressConfig
from crossdistill.engine import distill_layers
from crossdistill.errors import CrossDistillError
from crossdistill.moments import Moments
from crossdistill.objectives import create_objective
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers import LayerTask, create_solver
from crossdistill.solvers.quant_grid import code_range, fit_grid
from crossdistill.solvers.quant_gptq import gptq_sweep
from crossdistill.solvers.quant_rtn import row_losses
from tiny import make_tiny


def images(n=24, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def random_problem(seed, d=30, out=6, n=300, coupling=0.5, objective="nocross"):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    mix = torch.eye(d, dtype=f64) + coupling * torch.randn(d, d, generator=g, dtype=f64)
    xt = torch.randn(n, d, generator=g, dtype=f64) @ mix
    xs = xt + 0.3 * torch.randn(n, d, generator=g, dtype=f64)
    wt = torch.randn(out, d, generator=g, dtype=f64)
    m = Moments(tt=xt.T @ xt / n, ss=xs.T @ xs / n, ts=xt.T @ xs / n, count=n)
    return create_objective(objective).build(m, wt)


def quantize_tiny(bits=4, scheme="asymmetric", solver="gptq", objective="mixed", **method_kw):
    teacher = make_tiny()
    student = copy.deepcopy(teacher)
    method = Quantization(bits=bits, quant_scheme=scheme, **method_kw)
    recs = distill_layers(teacher, student, images(), method.plan(student), create_objective(objective),
                          create_solver("quant", solver), damping=1e-2)
    return teacher, method.finalize(student, recs), recs


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantized_weights_lie_on_the_grid(bits, scheme):
    _, student, recs = quantize_tiny(bits, scheme)
    quant = getattr(student, QUANT_ATTR)
    assert set(quant) == {"conv1", "conv2", "conv3", "fc"}
    qmin, qmax = code_range(bits, scheme)
    for name, e in quant.items():
        codes = e["codes"]
        assert codes.dtype == (torch.int8 if scheme == "symmetric" else torch.uint8)
        assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
        assert e["scale"].dtype == torch.float32 and bool((e["scale"] > 0).all())
        if scheme == "symmetric":
            assert bool((e["zero_point"] == 0).all())
        # The running model's weights are exactly the dequantised codes.
        shape = (-1,) + (1,) * (codes.dim() - 1)
        manual = e["scale"].reshape(shape) * (codes.float() - e["zero_point"].float().reshape(shape))
        weight = student.get_submodule(name).weight.detach()
        assert torch.equal(weight, manual)
        assert torch.equal(weight, dequantized_weight(e))
        # At most 2^bits distinct values in each output channel.
        for row in weight.reshape(weight.shape[0], -1):
            assert len(torch.unique(row)) <= 2**bits


def test_eight_bits_barely_changes_the_logits():
    teacher, student, _ = quantize_tiny(8, "symmetric")
    x = images(16, seed=3)
    with torch.no_grad():
        a, b = teacher(x), student(x)
    assert (a - b).abs().max() / a.abs().max() < 1e-2
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_first_and_last_layers_optional():
    _, student, _ = quantize_tiny(4, quant_first=False, quant_last=False)
    assert set(getattr(student, QUANT_ATTR)) == {"conv2", "conv3"}
    assert torch.equal(student.conv1.weight, make_tiny().conv1.weight)


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_solver_never_worse_than_rtn(bits, scheme):
    """On the layer's own loss, over random problems, including ill-conditioned undamped ones
    where the raw greedy sweep can lose on some rows (the solver's per-row guard)."""
    for seed in range(6):
        for coupling, damping in ((0.5, 0.0), (0.2, 1e-2)):
            p = random_problem(seed, coupling=coupling).damped(damping)
            task = LayerTask(name="l", params={"bits": bits, "scheme": scheme})
            q = create_solver("quant", "gptq").solve(p, task, None).weight
            r = create_solver("quant", "rtn").solve(p, task, None).weight
            assert p.loss(q) <= p.loss(r) + 1e-9 * abs(p.loss(r))
            assert torch.all(row_losses(p, q) <= row_losses(p, r) + 1e-9)


def test_raw_column_sweep_beats_rtn_on_damped_problems():
    wins = 0
    for seed in range(8):
        p = random_problem(seed, objective="mixed").damped(1e-2)
        target = p.solve()
        grid = fit_grid(target, 3, "asymmetric")
        q = gptq_sweep(target, p.H, grid)
        assert torch.equal(grid.quantize(q), q)  # on the grid
        wins += p.loss(q) < p.loss(grid.quantize(target))
    assert wins == 8


def test_lazy_blocks_do_not_change_the_sweep():
    p = random_problem(1).damped(1e-2)
    grid = fit_grid(p.w_teacher, 3, "symmetric")
    a = gptq_sweep(p.solve(), p.H, grid, block_size=7)
    b = gptq_sweep(p.solve(), p.H, grid, block_size=1000)
    assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_one_sweep_of_stacked_grids_equals_a_sweep_per_grid(scheme):
    """The GPTQ solver sweeps its candidate grids' rows stacked (one loop, one factor of H):
    each grid's rows must come out exactly as from a sweep of their own, column quantizer and all."""
    from crossdistill.solvers.quant_grid import Grid

    p = random_problem(2, coupling=0.5).damped(1e-2)
    target = p.solve()
    grids = [fit_grid(target, 3, scheme, clip=c) for c in ("minmax", "mse")]
    stacked = Grid(torch.cat([g.scale for g in grids]), torch.cat([g.zero_point for g in grids]), 3, scheme)
    together = gptq_sweep(target.repeat(2, 1), p.H, stacked).chunk(2)
    for g, q in zip(grids, together):
        assert torch.equal(q, gptq_sweep(target, p.H, g))
        assert torch.equal(g.quantize(q), q)  # on its grid
    column = grids[1].column_quantizer(target.dtype)
    assert all(torch.equal(column(target[:, j]), grids[1].quantize(target)[:, j]) for j in range(target.shape[1]))


def test_gptq_with_diagonal_metric_is_round_to_nearest():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 12, generator=g, dtype=torch.float64)
    H = torch.diag(torch.rand(12, generator=g, dtype=torch.float64) + 0.5)
    grid = fit_grid(W, 3, "asymmetric")
    assert torch.allclose(gptq_sweep(W, H, grid), grid.quantize(W))


@pytest.mark.parametrize("bad,message", [
    (1, r"bits must lie in \[2, 8\], got 1"), (9, r"bits must lie in \[2, 8\], got 9"),
    (16, r"bits must lie in \[2, 8\], got 16"), (0, r"bits must lie in \[2, 8\], got 0"),
    (3.5, "bits must be an integer, got 3.5"), (True, "bits must be an integer, got True"),
    ("four", "bits must be an integer, got 'four'"),
])
def test_bits_validated(bad, message):
    with pytest.raises(CrossDistillError, match=f"compression method quant: {message}"):
        Quantization(bits=bad)
    with pytest.raises(CrossDistillError, match=f"compression method quant: {message}"):
        CompressConfig(prune="quant", bits=bad)


def test_numeric_strings_are_read_as_numbers():
    # Flag values arrive as strings; the declaration converts them, the same code for YAML and CLI.
    assert Quantization(bits="4").bits == 4 and CompressConfig(prune="quant", bits="3").method.params["bits"] == 3


def test_scheme_and_solver_settings_validated():
    with pytest.raises(CrossDistillError, match=r"quant: quant_scheme must be one of .*got 'log'"):
        Quantization(quant_scheme="log")
    # quant_scheme belongs to the quant methods: given with the default method (channels) it is refused.
    with pytest.raises(CrossDistillError, match="quant_scheme=uniform is a setting of .*quant"):
        CompressConfig(quant_scheme="uniform")
    with pytest.raises(CrossDistillError, match=r"quant: quant_scheme must be one of .*got 'uniform'"):
        CompressConfig(prune="quant", quant_scheme="uniform")
    with pytest.raises(CrossDistillError, match=r"solver gptq: clip must be one of .*got 'percentile'"):
        create_solver("quant", "gptq", clip="percentile")
    with pytest.raises(CrossDistillError, match=r"solver rtn: grid_from must be one of .*got 'student'"):
        create_solver("quant", "rtn", grid_from="student")
    with pytest.raises(CrossDistillError, match=r"solver rtn: unknown setting \['block_size'\]"):
        create_solver("quant", "rtn", block_size=64)  # a gptq setting


def test_cli_rejects_bad_bits(capsys):
    from crossdistill.cli.main import main

    assert main(["compress", "--prune", "quant", "--bits", "1", "--data", "x.npz", "--out", "/nonexistent/never"]) == 2
    assert "bits" in capsys.readouterr().err


def test_quant_state_round_trip_reproduces_the_model():
    _, student, _ = quantize_tiny(3, "asymmetric")
    tensors, meta = quant_tensors(student), quant_metadata(student)
    fresh = make_tiny(seed=5)  # different float weights: the codes must overwrite them
    fresh.load_state_dict({k: v for k, v in student.state_dict().items() if not k.endswith(".weight")
                           or k.startswith("bn")}, strict=False)
    attach_quant(fresh, tensors, meta)
    x = images(4, seed=7)
    with torch.no_grad():
        assert torch.equal(fresh(x), student(x))
    bad = dict(tensors)
    bad["conv2.qcodes"] = bad["conv2.qcodes"].clone()
    bad["conv2.qcodes"][0, 0, 0, 0] = 255
    with pytest.raises(CrossDistillError, match="outside"):
        attach_quant(make_tiny(), bad, meta)


def test_dequantize_into_restores_weights_after_they_drift():
    _, student, _ = quantize_tiny(4)
    before = student.conv2.weight.detach().clone()
    with torch.no_grad():
        student.conv2.weight.add_(0.01)
    dequantize_into(student)
    assert torch.equal(student.conv2.weight, before)


def test_model_size_counts_packed_codes_and_scales():
    _, student, _ = quantize_tiny(4, "asymmetric")
    size = model_size_bytes(student)
    n_codes = sum(student.get_submodule(n).weight.numel() for n in ("conv1", "conv2", "conv3", "fc"))
    assert size["codes"] == sum((student.get_submodule(n).weight.numel() * 4 + 7) // 8
                                for n in ("conv1", "conv2", "conv3", "fc"))
    assert size["codes"] <= n_codes // 2 + 4
    out_channels = 6 + 8 + 5 + 4
    assert size["scales"] == out_channels * (4 + 1)
    assert size["total"] < model_size_bytes(make_tiny())["total"]


def test_channels_then_quant_runs_two_stages_on_the_slimmed_model():
    teacher = make_tiny()
    method = create_method("channels+quant", keep=0.5, bits=4)
    stages = method.stages()
    assert [s.solver_family for s, _ in stages] == ["channels", "quant"]
    # --solver names the channel solver; the quantization stage falls back to its default.
    assert stage_solver_name(stages[0][0], stages[0][1], "paper") == "paper"
    assert stage_solver_name(stages[1][0], stages[1][1], "paper") == "gptq"
    assert stage_solver_name(stages[1][0], "rtn", "paper") == "rtn"
    assert stage_solver_name(stages[1][0], None, "no-such-solver") == "no-such-solver"

    from crossdistill.pipeline import FewShot, compress

    cfg = CompressConfig(model="tiny", prune="channels+quant", keep=0.5, bits=4, damping=1e-2)
    fs = FewShot(images=images(), labels=torch.zeros(24, dtype=torch.long), indices=None)
    result = compress(teacher, fs, cfg, show_progress=False)
    student = result.student
    assert student.conv1.out_channels == 3 and student.conv2.in_channels == 3
    quant = getattr(student, QUANT_ATTR)
    for name, e in quant.items():
        assert e["codes"].shape == student.get_submodule(name).weight.shape
        assert torch.equal(student.get_submodule(name).weight, dequantized_weight(e))
    assert "then gptq" in result.solver
    assert {r.info["stage"] for r in result.records} == {"channels(keep=0.5)", "quant(bits=4,quant_scheme=asymmetric)"}
    assert model_size_bytes(student)["codes"] > 0


def test_a_fine_tune_leaves_quantized_weights_on_their_grid_and_reports_the_saved_model():
    """The codes are the model: the fine-tune trains the rest (biases, BatchNorm), so the loss it
    reports after training is the returned student's, and the weights equal their codes."""
    from torch import nn

    import crossdistill
    from crossdistill.compression.quantization import dequantized_weight
    from crossdistill.finetune.losses import few_shot_losses

    torch.manual_seed(0)
    x, y = torch.randn(60, 3, 8, 8), torch.arange(60) % 3
    teacher = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(6, 3)).eval()
    plain, _ = crossdistill.compress(teacher, x, labels=y, shots=5, method="quant", bits=4, show_progress=False)
    student, report = crossdistill.compress(teacher, x, labels=y, shots=5, method="quant", bits=4,
                                            finetune_epochs=5, finetune_mode="kd", finetune_lr=1e-2,
                                            show_progress=False)
    for name, entry in student.crossdistill_quant.items():
        assert torch.equal(student.get_submodule(name).weight.detach(), dequantized_weight(entry))
        assert torch.equal(student.get_submodule(name).weight, plain.get_submodule(name).weight)
    assert not torch.equal(student[0].bias, plain[0].bias)  # the fine-tune did train something
    few = x[report["fewshot_indices"]]
    with torch.no_grad():
        again = few_shot_losses(student, teacher(few), few, y[report["fewshot_indices"]], 4.0, 64)
    assert again["kd"] == pytest.approx(report["finetune"]["after"]["kd"], rel=1e-5)


def test_a_quant_solver_named_for_a_composite_runs_its_stage_and_the_channel_stage_its_default():
    """`channels+quant --solver rtn` was refused ("does not run method channels+quant") while
    `lowrank+quant --solver rtn` ran: --solver names a solver of any stage, the others keep
    their defaults. A method whose only stage lacks the solver still refuses it."""
    import crossdistill

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(20, 3, 8, 8)
    _, report = crossdistill.compress(teacher, x, n_samples=20, method="channels+quant", keep=0.5, solver="rtn",
                                      show_progress=False)
    assert report["solver"].startswith("closed-form(") and " then rtn(" in report["solver"]
    with pytest.raises(CrossDistillError, match="solver 'rtn' does not run method channels"):
        crossdistill.compress(teacher, x, n_samples=20, keep=0.5, solver="rtn", show_progress=False)


def test_a_fine_tune_with_nothing_to_train_names_the_trainable_setting():
    import crossdistill

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                                  torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(8, 4, bias=False)).eval()
    x, y = torch.randn(20, 3, 8, 8), torch.arange(20) % 4
    with pytest.raises(CrossDistillError, match="finetune_trainable 'pruned'.*finetune_trainable 'all'"):
        crossdistill.compress(teacher, x, labels=y, method="quant", bits=4, finetune_epochs=1,
                              finetune_trainable="pruned", show_progress=False)


def test_channels_then_quant_takes_every_setting_of_channel_pruning():
    # `method="channels+quant", flops=0.5` was refused as "a setting of method channels" while
    # keep=0.5 worked: the composite declared keep alone.
    from crossdistill.compression.channel_pruning import ChannelPruning
    from crossdistill.params import declared_params

    own = {p.name for p in declared_params(create_method("channels+quant").__class__)}
    assert {p.name for p in declared_params(ChannelPruning)} <= own
    method = create_method("channels+quant", flops=0.5, budget="global", bits=4)
    first = method.stages()[0][0]
    assert isinstance(first, ChannelPruning) and first.flops == 0.5 and first.budget == "global"
    with pytest.raises(CrossDistillError, match="give either keep"):
        create_method("channels+quant", keep=0.3, flops=0.5).stages()[0][0].check()

    import crossdistill
    from torch import nn

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(16, 4)).eval()
    x, y = torch.randn(20, 3, 8, 8), torch.arange(20) % 4
    student, report = crossdistill.compress(teacher, x, labels=y, method="channels+quant", flops=0.5,
                                            show_progress=False)
    assert report["student"]["flops"] <= 0.55 * report["teacher"]["flops"]
    assert student.crossdistill_quant  # the second stage ran on the slimmed model


@pytest.mark.parametrize("solver", ["gptq", "rtn"])
def test_an_8_bit_row_far_from_its_zero_point_is_on_the_grid(solver):
    """An all-positive row (an identity's) puts codes 255 steps from the zero point, where the
    float32 weight is off the float64 grid point by 1.5e-5 of a step: the on-grid check refused
    the solver's own result."""
    import crossdistill
    from crossdistill.compression.quantization import dequantize_into

    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(36, 4)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4).reshape(4, 4, 1, 1))
        model[0].bias.zero_()
    x = torch.rand(24, 4, 3, 3)
    student, _ = crossdistill.compress(model, x, labels=torch.arange(24) % 4, shots=2, method="quant", bits=8,
                                       quant_scheme="asymmetric", solver=solver, show_progress=False)
    kept = student[0].weight.detach().clone()
    dequantize_into(student)
    assert torch.equal(student[0].weight, kept) and torch.allclose(kept.reshape(4, 4), torch.eye(4), atol=1e-6)
