"""The paper's baselines on tiny models: FSKD's merge, ThiNet's and CP's selections, the
trained baselines' losses, the shared channel budget, and the `baseline` command."""
import copy
import itertools
import json

import numpy as np
import pytest
import torch

from crossdistill.baselines import BASELINES, insert_pointwise, merge_pointwise, run_baseline
from crossdistill.baselines.fitnet import hint_layers, hint_train
from crossdistill.baselines.fskd import PointwiseAfter
from crossdistill.cli.main import main
from crossdistill.compression.channels import plan_channels
from crossdistill.config import CompressConfig
from crossdistill.engine import distill_layers
from crossdistill.finetune import FinetuneSettings
from crossdistill.models import create_model, save_model
from crossdistill.objectives import create_objective
from crossdistill.pipeline import FewShot, compress
from crossdistill.solvers import LayerTask, create_solver
from crossdistill.solvers.base import channel_columns
from crossdistill.solvers.channel_fskd import pointwise_least_squares
from crossdistill.solvers.selection_baselines import (
    channel_gram, lasso_coefficients, lasso_select, select_lasso, select_thinet,
)
from test_solvers import problem
from tiny import make_tiny


def images(n=24, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def fewshot(n=16, seed=0):
    return FewShot(images=images(n, seed), labels=torch.arange(n) % 4, indices=np.arange(n))


def cfg(**kw):
    # Ours is the mixed objective at mu=0.9; the baselines replace it with their own (nocross).
    base = dict(model="tiny", objective="mixed", mu=0.9, keep=0.5, finetune_epochs=0, extra={"fitnet_epochs": 3})
    if kw.get("objective", "mixed") != "mixed":
        del base["mu"]  # mu is a setting of the mixed objective only
    base.update(kw)
    return CompressConfig(**base)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --- FSKD -------------------------------------------------------------------------------------

def test_fskd_merge_leaves_outputs_unchanged():
    net = make_tiny()
    q = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    unmerged = insert_pointwise(copy.deepcopy(net), "conv2", q)
    assert isinstance(unmerged.conv2, PointwiseAfter)
    merged = merge_pointwise(copy.deepcopy(unmerged))
    assert isinstance(merged.conv2, torch.nn.Conv2d) and merged.conv2.weight.shape == net.conv2.weight.shape
    x = images(5, seed=3)
    with torch.no_grad():
        assert torch.allclose(unmerged(x), merged(x), atol=1e-5)
        assert not torch.allclose(unmerged(x), net(x), atol=1e-3)  # Q really acted
    assert n_params(merged) == n_params(net)  # inference cost unchanged


def test_fskd_solver_is_the_merged_least_squares_pointwise_conv():
    p = problem(3, n_ch=6, group=4, out=5)
    task = LayerTask(name="conv", group=4, keep=3)
    kept = torch.tensor([0, 2, 5])
    Ws = torch.zeros_like(p.w_teacher)
    cols = channel_columns(kept, 4)
    Ws[:, cols] = p.w_teacher[:, cols]
    Q = pointwise_least_squares(p, Ws)
    # Q is the exact minimiser over Q·W_s: the gradient in Q, 2 (Q W_s H − B) W_sᵀ, vanishes.
    assert torch.allclose(p.gradient(Q @ Ws) @ Ws.T, torch.zeros(5, 5, dtype=Q.dtype), atol=1e-9)
    assert p.loss(Q @ Ws) <= p.loss(Ws) + 1e-12
    # ... and never better than the closed form on the same channels.
    assert p.loss(p.solve_on(cols)) <= p.loss(Q @ Ws) + 1e-9
    del task


def _layers(solver, selection="l1", objective="nocross"):
    teacher = make_tiny()
    student = copy.deepcopy(teacher)
    return distill_layers(teacher, student, images(), plan_channels(student, 0.5), create_objective(objective),
                          create_solver("channels", solver, selection=selection), damping=1e-3)


def test_fskd_lowers_layer_error_below_prune_only():
    fskd, prune = _layers("fskd"), _layers("prune-only")
    assert fskd[0].info["kept"] == prune[0].info["kept"]  # same L1 channels, same inputs
    assert fskd[0].loss_after < prune[0].loss_after
    cf = _layers("closed-form")
    assert cf[0].loss_after <= fskd[0].loss_after + 1e-9


# --- ThiNet -----------------------------------------------------------------------------------

def _masked_teacher(p, channels, group):
    W = torch.zeros_like(p.w_teacher)
    cols = channel_columns(torch.as_tensor(channels), group)
    W[:, cols] = p.w_teacher[:, cols]
    return W


@pytest.mark.parametrize("seed,objective", [(0, "nocross"), (1, "mixed"), (2, "correction"), (4, "nocross")])
def test_thinet_single_removal_matches_brute_force(seed, objective):
    n, g = 6, 4
    p = problem(seed, n_ch=n, group=g, objective=objective)
    kept = select_thinet(p, LayerTask(name="x", group=g, keep=n - 1), None)
    losses = {j: p.loss(_masked_teacher(p, [c for c in range(n) if c != j], g)) for j in range(n)}
    best = min(losses, key=losses.get)
    assert kept.tolist() == [c for c in range(n) if c != best]


def test_channel_gram_reproduces_problem_loss():
    n, g = 6, 4
    p = problem(5, n_ch=n, group=g, objective="mixed")
    G, gv = channel_gram(p, g)
    beta = torch.randn(n, dtype=G.dtype)
    W = (p.w_teacher.reshape(-1, n, g) * beta[None, :, None]).reshape(p.w_teacher.shape)
    assert p.loss(W) == pytest.approx(float(beta @ G @ beta - 2 * gv @ beta + p.c), rel=1e-9)


def test_thinet_greedy_close_to_brute_force_on_larger_removals():
    """Greedy is not optimal for several removals, but on this problem it should be near."""
    n, g, keep = 6, 4, 3
    p = problem(6, n_ch=n, group=g)
    kept = select_thinet(p, LayerTask(name="x", group=g, keep=keep), None).tolist()
    best = min(p.loss(_masked_teacher(p, list(s), g)) for s in itertools.combinations(range(n), keep))
    assert len(kept) == keep
    assert p.loss(_masked_teacher(p, kept, g)) <= 1.5 * best


# --- CP (LASSO) -------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [1, 2, 3, 4, 5, 6])
def test_lasso_selection_keeps_exactly_keep(keep):
    n, g = 6, 4
    p = problem(7, n_ch=n, group=g)
    kept = select_lasso(p, LayerTask(name="x", group=g, keep=keep), None)
    assert kept.dtype == torch.long and len(kept) == keep and len(set(kept.tolist())) == keep
    assert kept.tolist() == sorted(kept.tolist())


def test_lasso_small_penalty_keeps_all_large_keeps_none():
    p = problem(8, n_ch=6, group=4)
    G, g = channel_gram(p, 4)
    assert np.count_nonzero(lasso_coefficients(G, g, 1e-10)) == 6
    lam_max = 2 * float(np.abs(g.numpy() / np.sqrt(np.diag(G.numpy()))).max())
    assert np.count_nonzero(lasso_coefficients(G, g, lam_max * 1.01)) == 0
    # The penalty is what selects: more of it, fewer channels.
    counts = [np.count_nonzero(lasso_coefficients(G, g, lam_max * f)) for f in (0.01, 0.1, 0.5, 0.9)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_lasso_select_is_exact_on_random_grams():
    rng = np.random.default_rng(0)
    for n in (5, 16, 40):
        A = rng.standard_normal((3 * n, n))
        G, g = A.T @ A, A.T @ rng.standard_normal(3 * n)
        for keep in (1, n // 2, n - 1):
            kept, lam = lasso_select(G, g, keep)
            assert len(kept) == keep and lam > 0


# --- trained baselines ------------------------------------------------------------------------

def test_fitnet_hint_training_lowers_its_loss():
    teacher = make_tiny()
    base = compress(teacher, fewshot(), cfg(solver="prune-only", selection="l1"), show_progress=False)
    student = base.student
    hints, kept_out = hint_layers(student, base.records)
    assert hints == ["conv2", "conv3"] and kept_out["conv2"].tolist() == sorted(base.records[1].info["kept"])
    settings = FinetuneSettings(epochs=30, lr=1e-2, batch_size=64, augment=False)
    history = hint_train(student, teacher, fewshot().images, hints, settings, kept_out)
    assert len(history) == 30 and history[-1] < 0.7 * history[0]
    assert not student.training


@pytest.mark.parametrize("key", ["chain", "resnet", "densenet", "shufflenet"])
def test_fitnet_on_a_model_without_channel_pairs_uses_the_graphs_groups(key):
    """A user's model: the hints are the re-solved readers; one that also produces a pruned group
    is compared on the teacher channels it kept (a chain), or dropped where its outputs are not
    exactly the group's units (ShuffleNet's branches, regrouped by the shuffle); the hint loss
    then falls."""
    from test_graph_channels import build

    teacher, example = build(key)
    few = FewShot(images=torch.randn((16, *example.shape[1:]), generator=torch.Generator().manual_seed(0)),
                  labels=torch.arange(16) % 3, indices=np.arange(16))
    base = compress(teacher, few, CompressConfig(model=f"user-{key}", n_samples=16, keep=0.5, solver="prune-only",
                                                 selection="l1", objective="nocross"), show_progress=False)
    groups = base.summary["channel_groups"]["pruned"]
    hints, kept_out = hint_layers(base.student, base.records, teacher, groups)
    assert hints and set(hints) <= {r.name for r in base.records}
    for name, channels in kept_out.items():
        group = next(g for g in groups if name in g["producers"])
        assert channels.tolist() == sorted(base.student.crossdistill_slim["kept"][group["group"]])
    if key == "chain":
        assert kept_out  # a VGG-like chain: every inner conv is reader and producer
    if key == "shufflenet":
        assert len(hints) < len(base.records)
    settings = FinetuneSettings(epochs=20, lr=1e-2, batch_size=64, augment=False)
    history = hint_train(base.student, teacher, few.images, hints, settings, kept_out)
    assert history[-1] < history[0]


def test_bp_finetune_lowers_cross_entropy():
    teacher = make_tiny()
    res = run_baseline("bp", teacher, fewshot(), cfg(finetune_epochs=30, finetune_lr=1e-2))
    ft = res.finetune
    assert ft["settings"]["kd_weight"] == 0.0 and ft["steps"] == 30
    assert ft["after"]["ce"] < ft["before"]["ce"]


def test_l1_finetune_uses_a_default_length_and_l1_none():
    teacher = make_tiny()
    assert run_baseline("l1", teacher, fewshot(), cfg()).finetune is None
    res = run_baseline("l1-finetune", teacher, fewshot(), cfg(extra={}, finetune_epochs=2))
    assert res.finetune["steps"] == 2 and res.finetune["settings"]["kd_weight"] == 1.0


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_keeps_the_channel_budget(name):
    teacher = make_tiny()
    ours = compress(teacher, fewshot(), cfg(), show_progress=False).student
    res = run_baseline(name, teacher, fewshot(), cfg(finetune_epochs=1 if "finetune" in name or name == "bp" else 0))
    student = res.student
    assert n_params(student) == n_params(ours)
    assert [student.conv2.in_channels, student.conv3.in_channels] == [ours.conv2.in_channels, ours.conv3.in_channels]
    assert not student.training
    with torch.no_grad():
        assert torch.isfinite(student(images(3, seed=5))).all()
    # The teacher is never modified.
    with torch.no_grad():
        assert torch.equal(teacher(images(3)), make_tiny()(images(3)))


def test_layerwise_baselines_use_their_selection():
    teacher = make_tiny()
    a = run_baseline("thinet", teacher, fewshot(), cfg())
    b = compress(teacher, fewshot(), cfg(objective="nocross", selection="thinet"), show_progress=False)
    assert a.solver == "closed-form(selection=thinet)" and a.objective == "nocross"
    assert [r.info["kept"] for r in a.records] == [r.info["kept"] for r in b.records]
    assert run_baseline("cp", teacher, fewshot(), cfg()).solver == "closed-form(selection=lasso)"
    assert run_baseline("fskd", teacher, fewshot(), cfg()).solver == "fskd(selection=l1)"


def test_channel_only_baselines_refuse_sparsity():
    from crossdistill.errors import CrossDistillError

    with pytest.raises(CrossDistillError, match="prunes channels"):
        run_baseline("thinet", make_tiny(), fewshot(), CompressConfig(model="tiny", prune="sparsity", sparsity=0.5))


# --- CLI --------------------------------------------------------------------------------------

@pytest.fixture()
def tiny_data(tmp_path):
    torch.manual_seed(0)
    model = create_model("fashion_cnn")
    weights = save_model(model, tmp_path / "teacher.safetensors")
    rng = np.random.default_rng(0)
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, x=rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8), y=np.arange(40) % 10)
    np.savez(test, x=rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8), y=rng.integers(0, 10, 12))
    return ["--model", "fashion_cnn", "--weights", str(weights), "--data", str(train), "--eval-data", str(test),
            "--shots", "2", "--no-latency", "--quiet"]


def test_baseline_cli_writes_the_report_fields_of_compress(tiny_data, tmp_path, capsys):
    assert main(["compress", *tiny_data, "--out", str(tmp_path / "ours")]) == 0
    assert main(["baseline", "cp", *tiny_data, "--out", str(tmp_path / "cp")]) == 0
    assert "baseline cp" in capsys.readouterr().out
    ours = json.loads((tmp_path / "ours" / "report.json").read_text())
    theirs = json.loads((tmp_path / "cp" / "report.json").read_text())
    assert set(ours) <= set(theirs) and theirs["baseline"] == "cp"
    assert theirs["fewshot_indices"] == ours["fewshot_indices"]
    assert theirs["student"]["params"] == ours["student"]["params"]
    assert (tmp_path / "cp" / "student.safetensors").is_file()


def test_baseline_cli_refuses_choices_it_fixes(tiny_data, tmp_path, capsys):
    assert main(["baseline", "thinet", *tiny_data, "--selection", "obs", "--out", str(tmp_path / "x")]) == 2
    assert "fixes --selection" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compress_with_a_baseline_flag_runs_that_baseline(tiny_data, tmp_path, capsys):
    # `compress --help` offered --baseline NAME ("run this baseline instead"), and compress then
    # refused it; it now runs as `crossdistill baseline NAME` does, to the same student.
    assert main(["baseline", "l1", *tiny_data, "--out", str(tmp_path / "cmd")]) == 0
    assert main(["compress", *tiny_data, "--baseline", "l1", "--out", str(tmp_path / "flag")]) == 0
    assert "baseline l1" in capsys.readouterr().out
    via_cmd, via_flag = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("cmd", "flag"))
    kept = [[(row["name"], row.get("kept"), row["loss_after"]) for row in r["layers"]] for r in (via_cmd, via_flag)]
    assert via_flag["baseline"] == "l1" and kept[0] == kept[1]
    assert via_flag["student"]["top1"] == via_cmd["student"]["top1"]
    assert main(["compress", *tiny_data, "--baseline", "thinet", "--selection", "obs",
                 "--out", str(tmp_path / "x")]) == 2
    assert "fixes --selection" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_fitnet_augment_is_a_switch():
    # It took a value (--fitnet-augment FITNET_AUGMENT) where every other on/off setting is a switch.
    from crossdistill.cli.main import build_parser

    parse = build_parser().parse_args
    assert parse(["baseline", "fitnet", "--no-fitnet-augment", "--out", "o"]).fitnet_augment is False
    assert parse(["baseline", "fitnet", "--out", "o"]).fitnet_augment is None  # the declared default then


def test_a_baseline_run_folder_reruns_that_baseline(tiny_data, tmp_path, capsys):
    """`baseline l1` wrote `baseline: null` (and the default objective) into config.yaml, so
    `compress --config RUN/config.yaml` reran cross distillation instead of L1; and a second
    baseline given with --baseline was silently overridden yet recorded."""
    import yaml

    assert main(["baseline", "l1", *tiny_data, "--out", str(tmp_path / "l1")]) == 0
    assert yaml.safe_load((tmp_path / "l1" / "config.yaml").read_text())["baseline"] == "l1"
    first = json.loads((tmp_path / "l1" / "report.json").read_text())
    assert first["config"]["baseline"] == "l1" == first["baseline"]
    assert main(["compress", "--config", str(tmp_path / "l1" / "config.yaml"), "--out", str(tmp_path / "again"),
                 "--quiet"]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["baseline"] == "l1" and again["student"]["top1"] == first["student"]["top1"]
    assert main(["baseline", "fskd", *tiny_data, "--baseline", "cp", "--out", str(tmp_path / "two")]) == 2
    assert "given a second baseline, cp" in capsys.readouterr().err and not (tmp_path / "two").exists()


def test_a_baseline_run_is_quiet_about_the_objective_it_replaces(tiny_data, tmp_path, capsys):
    """Every baseline run warned 'objective.alpha=0.0 is not a setting of the selected objective
    nocross: ignored' (twice) for the default objective's settings nobody gave; an objective
    setting given by hand is refused like --objective, and --help leaves out what it refuses."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the run
        assert main(["baseline", "l1", *tiny_data, "--out", str(tmp_path / "l1")]) == 0
    assert "not a setting" not in capsys.readouterr().err
    assert main(["baseline", "l1", *tiny_data, "--mu", "0.5", "--out", str(tmp_path / "mu")]) == 2
    assert "fixes --mu itself" in capsys.readouterr().err
    from crossdistill.cli.main import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["baseline"].format_help()
    assert "--selection {" not in text and "--mu MU" not in text and "--finetune-epochs" in text


def test_a_baseline_under_torchrun_is_refused(tiny_data, tmp_path, capsys, monkeypatch):
    """Each torchrun rank ran the whole baseline, then one failed on --out 'being written by
    another crossdistill run' (its sibling)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["baseline", "l1", *tiny_data, "--out", str(tmp_path / "a")]) == 2
    assert main(["compress", *tiny_data, "--baseline", "l1", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("(rank 0) baselines run in one process") == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
