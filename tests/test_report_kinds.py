"""Report kinds (crossdistill.reporting.kinds), each rendered from a hand-built database."""
from __future__ import annotations

import json

import pytest

from crossdistill.cli.main import main
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.reporting import REPORT_KINDS, declared_kind, render_report
from crossdistill.sweep import SweepDB, config_hash, load_sweep
from crossdistill.sweep.runner import row_for
from sweep_helpers import write_sweep

BASE = {"model": "fashion_cnn", "data": "train.npz", "eval_data": "test.npz", "keep": 0.5, "latency": False}


def add(db: SweepDB, top1: float, report: dict | None = None, compress: float = 2.0, **values) -> None:
    cfg = CompressConfig.from_dict({**BASE, **values})
    db.record_run({**row_for(cfg, config_hash(cfg), "hand"), "status": "ok", "student_top1": top1,
                   "teacher_top1": 90.0, "n_eval": 100, "student_params": 500, "student_flops": 1_000_000,
                   "teacher_params": 1000, "teacher_flops": 2_000_000, "compress_seconds": compress,
                   "run_seconds": compress + 1, "report": json.dumps(report or {})})


def latency(ms1: float, ms128: float) -> list[dict]:
    return [{"batch_size": 1, "median_ms": ms1, "iqr_ms": 0.2}, {"batch_size": 128, "median_ms": ms128, "iqr_ms": 4.0}]


def test_registry_lists_the_kinds_and_refuses_unknown_ones_and_settings():
    assert set(REPORT_KINDS) == {"accuracy", "budget", "latency", "paired", "solvers"}
    with pytest.raises(CrossDistillError, match="unknown report kind"):
        REPORT_KINDS.build("nope")
    with pytest.raises(CrossDistillError, match="unknown setting"):
        REPORT_KINDS.build("latency", {"reference": "x"})


def test_latency_kind_gives_medians_and_speedups(tmp_path):
    db_path = tmp_path / "lat.sqlite"
    with SweepDB(db_path) as db:
        for seed, ms in enumerate([4.0, 5.0, 9.0]):  # median 5.0 over the three runs of the student
            add(db, 50.0, {"teacher": {"latency": latency(10.0, 400.0)}, "student": {"latency": latency(ms, 200.0)}},
                objective="nocross", solver="prune-only", shots=1, seed=seed)
    summary = render_report(db_path, tmp_path / "out", kind="latency")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| batch 1 (ms) | speed-up | batch 128 (ms) | speed-up |" in md
    # The teacher's one timing (copied into each run) with its forwards' spread; the student's
    # median over three runs with the fastest and slowest.
    assert "| default | teacher |  | 2.0 | 1,000 | 10.00 ± 0.10 | 1.00× | 400.00 ± 2.00 | 1.00× |" in md
    assert "| 1.0 | 500 | 5.00 (4.00–9.00) | 2.00× | 200.00 (200.00–200.00) | 2.00× |" in md
    student = [e for e in summary["latency"] if e["method"]]
    assert student[0]["runs"] == 3 and student[0]["latency"][1]["median_ms"] == 5.0
    assert student[0]["latency"][1]["slowest_run_ms"] == 9.0


def test_latency_kind_compares_each_thread_count_with_its_own_teacher(tmp_path):
    db_path = tmp_path / "threads.sqlite"
    with SweepDB(db_path) as db:
        for threads, teacher_ms, student_ms in [(1, 1000.0, 500.0), (2, 150.0, 100.0)]:
            for seed in range(2):
                add(db, 50.0, {"teacher": {"latency": latency(teacher_ms, 4 * teacher_ms)},
                               "student": {"latency": latency(student_ms, 4 * student_ms)}},
                    objective="nocross", shots=1, seed=seed, threads=threads, latency=True)
    summary = render_report(db_path, tmp_path / "out", kind="latency")
    speedups = {(e["threads"], bool(e["method"])): e for e in summary["latency"]}
    assert set(speedups) == {(1, False), (1, True), (2, False), (2, True)}
    assert speedups[(1, False)]["latency"][1]["median_ms"] == 1000.0  # not pooled with the 2-thread timing
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 1 | teacher |" in md and "| 2 | teacher |" in md
    assert "| 500.00 (500.00–500.00) | 2.00× |" in md and "| 100.00 (100.00–100.00) | 1.50× |" in md


def test_latency_kind_without_timings_says_so(tmp_path):
    db_path = tmp_path / "nolat.sqlite"
    with SweepDB(db_path) as db:
        add(db, 50.0, objective="nocross", shots=1, seed=0)
    render_report(db_path, tmp_path / "out", kind="latency")
    assert "No run recorded a latency" in (tmp_path / "out" / "report.md").read_text()


def test_paired_kind_gives_per_draw_differences_against_the_reference(tmp_path):
    db_path = tmp_path / "p.sqlite"
    with SweepDB(db_path) as db:
        for seed, (ref, soft) in enumerate([(80.0, 81.0), (82.0, 81.5), (84.0, 86.0)]):
            add(db, ref, objective="nocross", shots=1, seed=seed)
            add(db, soft, objective="soft", shots=1, seed=seed)
        add(db, 90.0, objective="soft", shots=5, seed=0)  # no reference at K=5: a dash
        for seed, v in enumerate([70.0, 71.0]):  # another eval split: its own table
            add(db, v, objective="nocross", shots=1, seed=seed, eval_data="val.npz")
    summary = render_report(db_path, tmp_path / "out", kind="paired", params={"reference": "objective=nocross"})
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| vs `nocross` | K=1 | K=5 |" in md
    assert "| soft(alpha=0,beta=0.3) | +0.83 (2/3) | – |" in md  # +1.0, -0.5, +2.0
    assert md.count("## fashion_cnn") == 2
    assert summary["settings"][0]["paired"]["soft(alpha=0,beta=0.3)"]["1"] == [1.0, -0.5, 2.0]
    # A setting without the reference (the val.npz runs are all nocross) says so in its table...
    render_report(db_path, tmp_path / "some", kind="paired", params={"reference": "objective=soft"})
    assert "0 methods match the reference" in (tmp_path / "some" / "report.md").read_text()
    # ... a reference a letter away from what the runs have is a typo: refused, nothing written.
    with pytest.raises(CrossDistillError, match=r"reference objective=nocros: no run has it \(did you mean "
                                                r"objective=nocross\? the runs have objective nocross, soft\)"):
        render_report(db_path, tmp_path / "none", kind="paired", params={"reference": "objective=nocros"})
    assert not (tmp_path / "none").exists()
    with pytest.raises(CrossDistillError, match="KEY=VALUE"):
        render_report(db_path, tmp_path / "bad", kind="paired", params={"reference": "nocross"})


def test_solvers_kind_separates_draws_and_divides_by_the_reference(tmp_path):
    db_path = tmp_path / "s.sqlite"
    layers = {"layers": [{"loss_after": 1.0}, {"loss_after": 2.5}]}
    with SweepDB(db_path) as db:
        add(db, 85.0, {**layers, "solve_seconds": 0.5}, compress=2.0, shots=1, seed=0, sampler="first")
        for seed, v in enumerate([84.0, 86.0]):
            add(db, v, {**layers, "solve_seconds": 0.5}, compress=2.0, shots=1, seed=seed)
        add(db, 86.0, {**layers, "solve_seconds": 50.0}, compress=60.0, shots=1, seed=0, sampler="first",
            solver="paper")
    summary = render_report(db_path, tmp_path / "out", kind="solvers", params={"reference": "solver=paper"})
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 1 | soft(alpha=0,beta=0.3) | 85.0 | 85.0 ± 1.4 [2] | 3.5000 | 2.0 | 0.50 | 30× | 100× |" in md
    assert "| 1 | soft(alpha=0,beta=0.3) [paper(iters=3000,lr=0.001)] | 86.0 | – |" in md
    assert {e["method"] for e in summary["solvers"]} == {"soft(alpha=0,beta=0.3)",
                                                        "soft(alpha=0,beta=0.3) [paper(iters=3000,lr=0.001)]"}
    # The test set and the teacher are named, as in every kind.
    assert "Teacher: **90.00 %** top-1 on 100 test images (test.npz)" in md
    assert {(e["n_eval"], e["eval_data"]) for e in summary["solvers"]} == {(100, "test.npz")}


def test_budget_kind_pairs_global_with_uniform_at_each_target_and_plots_the_plan(tmp_path):
    db_path = tmp_path / "b.sqlite"

    def plan(kept: list[int]) -> dict:
        return {"channel_groups": {"pruned": [{"group": i, "width": 8, "kept": k, "readers": [f"c{i}"],
                                               "producers": []} for i, k in enumerate(kept)]}}

    with SweepDB(db_path) as db:
        for seed, (u, g) in enumerate([(80.0, 83.0), (82.0, 81.0)]):
            add(db, u, plan([4, 4]), shots=1, seed=seed)
            add(db, g, {**plan([2, 6]), "channel_budget": {"seconds": 0.5}, "solve_seconds": 0.3}, compress=2.5,
                shots=1, seed=seed,
                budget="global")
        add(db, 70.0, plan([4, 4]), shots=1, seed=0, keep=0.3)  # another target, no global run: no table
    summary = render_report(db_path, tmp_path / "out", kind="budget")
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("### fashion_cnn, channels keep 0.5") == 1 and "keep 0.3" not in md
    assert "| 1 | 0,1 | 81.00 ± 1.41 | 82.00 ± 1.41 | +1.00 (1/2) | 1.00 / 1.00 | 2.0 / 2.5 | 0.5 / 1.7 / 0.3 / – |" in md
    assert summary["plots"] and (tmp_path / "out" / summary["plots"][0]).stat().st_size > 0
    assert summary["settings"][0]["rows"][0]["global"] == [83.0, 81.0]


def test_budget_kind_shows_views_and_recovery_as_their_own_variant_with_the_fine_tune_seconds(tmp_path):
    db_path = tmp_path / "r.sqlite"
    with SweepDB(db_path) as db:
        for seed, (u, g, rec) in enumerate([(80.0, 83.0, 86.0), (82.0, 81.0, 85.0)]):
            add(db, u, shots=1, seed=seed)
            add(db, g, {"channel_budget": {"seconds": 0.5}, "solve_seconds": 0.3}, compress=2.5, shots=1,
                seed=seed, budget="global")
            # compress_seconds of a run with a fine-tune include it: the stages must not count it twice
            add(db, rec, {"channel_budget": {"seconds": 0.5}, "solve_seconds": 0.3, "finetune": {"seconds": 60.0}},
                compress=62.5, shots=1, seed=seed, budget="global", views=4, views_policy="crop-flip",
                finetune_epochs=50, finetune_mode="hints")
    summary = render_report(db_path, tmp_path / "out", kind="budget")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "+ 4 crop-flip views + recovery (hints, constant lr 0.0001)" in md
    assert "| 1 | 0,1 | 81.00 ± 1.41 | 85.50 ± 0.71 | +4.50 (2/2) | 1.00 / 1.00 | 2.0 / 62.5 | 0.5 / 1.7 / 0.3 / 60.0 (50 epochs) |" in md
    assert len(summary["settings"]) == 2


def test_budget_kind_keeps_a_later_run_of_the_same_cell_with_other_epochs_as_its_own_table(tmp_path):
    """A recovery rerun with 400 epochs where 300 had run took the 300-epoch rows' place in the
    table (the variant leaves the epochs out); both are shown, the later one named by its epochs.
    A rerun differing only in latency still replaces the earlier row."""
    db_path = tmp_path / "e.sqlite"
    with SweepDB(db_path) as db:
        for seed in (0, 1):
            add(db, 80.0, shots=5, seed=seed)
            add(db, 85.0, shots=5, seed=seed, budget="global", finetune_epochs=300, finetune_mode="hints")
            add(db, 87.0, shots=5, seed=seed, budget="global", finetune_epochs=400, finetune_mode="hints")
            add(db, 81.0, shots=5, seed=seed, latency=True)
    md = (render_report(db_path, tmp_path / "out", kind="budget") and (tmp_path / "out" / "report.md").read_text())
    assert "| 5 | 0,1 | 81.00 ± 0.00 | 85.00 ± 0.00 |" in md
    assert "[finetune.epochs=400]" in md and "| 5 | 0,1 | 81.00 ± 0.00 | 87.00 ± 0.00 |" in md


def test_kind_declared_by_the_sweep_file_is_used_and_checked(tmp_path, capsys):
    cfg = write_sweep(tmp_path / "s.yaml", tmp_path / "train.npz", tmp_path / "test.npz",
                      grid={"seed": [0]}, runs=[{"objective": "nocross"}])
    text = cfg.read_text() + "report: {name: paired, params: {reference: objective=soft}}\n"
    cfg.write_text(text)
    spec = load_sweep(cfg)
    assert spec.report == {"name": "paired", "params": {"reference": "objective=soft"}}
    db_path = tmp_path / "d.sqlite"
    with SweepDB(db_path) as db:
        db.record_invocation(spec, [])
        add(db, 50.0, objective="nocross", shots=1, seed=0)
    assert declared_kind(db_path) == ("paired", {"reference": "objective=soft"})
    assert main(["report", str(db_path), "--out", str(tmp_path / "r")]) == 0
    assert "kind paired" in capsys.readouterr().out
    assert f"Made by `crossdistill sweep {cfg} --db {db_path}`" in (tmp_path / "r" / "report.md").read_text()
    assert main(["report", str(db_path), "--out", str(tmp_path / "r2"), "--kind", "accuracy"]) == 0
    # The recorded command line, --set values included, and the report's own --kind: the line
    # dropped both, so it could not re-make what it described.
    with SweepDB(db_path) as db:
        db.record_invocation(spec, ["sweep", str(cfg), "--db", str(db_path), "--set", "shots=5"])
    assert main(["report", str(db_path), "--out", str(tmp_path / "r4"), "--kind", "accuracy"]) == 0
    made = (tmp_path / "r4" / "report.md").read_text()
    assert f"`crossdistill sweep {cfg} --db {db_path} --set shots=5`" in made
    assert f"rendered by `crossdistill report {db_path} --kind=accuracy`" in made
    cfg.write_text(text.replace("name: paired", "name: pared"))
    with pytest.raises(CrossDistillError, match="report: unknown report kind 'pared'"):
        load_sweep(cfg)


def test_sparsity_and_quant_sections_give_nonzero_weights_and_stored_size(tmp_path):
    """Their students keep the teacher's shapes and FLOPs: the section says what they did save,
    and the FLOPs plot leaves them out instead of stacking their levels on the teacher's FLOPs."""
    db_path = tmp_path / "q.sqlite"
    with SweepDB(db_path) as db:
        for values, nonzero, stored, flops in [({"method": "quant", "bits": 4}, 1000, 600, 2_000_000),
                                               ({"method": "quant", "bits": 2}, 1000, 350, 2_000_000),
                                               ({"keep": 0.5}, 500, 2000, 1_000_000)]:
            base = {k: v for k, v in BASE.items() if k != "keep"}
            cfg = CompressConfig.from_dict({**base, **values, "shots": 1, "seed": 0})
            report = {"teacher": {"size_bytes": 4000}, "student": {"nonzero_params": nonzero, "size_bytes": stored}}
            db.record_run({**row_for(cfg, config_hash(cfg), "hand"), "status": "ok", "student_top1": 80.0,
                           "teacher_top1": 90.0, "n_eval": 100, "student_params": 1000 if flops == 2_000_000 else 500,
                           "student_flops": flops, "teacher_params": 1000, "teacher_flops": 2_000_000,
                           "compress_seconds": 1.0, "run_seconds": 2.0, "report": json.dumps(report)})
    render_report(db_path, tmp_path / "out", kind="accuracy")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Student: 0.00 M params (100.0 % of the teacher), stored in 1 KiB (15.0 % of the teacher)" in md
    assert "stored in 0 KiB (8.8 % of the teacher)" in md
    plots = sorted(p.name for p in (tmp_path / "out").glob("accuracy_vs_flops_*.png"))
    assert len(plots) == 1 and md.count(": accuracy vs FLOPs") == 1  # the channel pruning's only
    summary = json.loads((tmp_path / "out" / "report.json").read_text())
    cells = [c for s in summary["settings"] for c in s["cells"]]
    assert sorted(c["size_bytes"] for c in cells) == [350, 600, 2000]


def test_one_draw_shows_no_spread_in_the_budget_table_or_the_json(tmp_path):
    db_path = tmp_path / "one.sqlite"
    with SweepDB(db_path) as db:
        add(db, 80.0, shots=1, seed=0)
        add(db, 83.0, {"channel_budget": {"seconds": 0.5}}, shots=1, seed=0, budget="global")
    render_report(db_path, tmp_path / "b", kind="budget")
    assert "| 1 | 0 | 80.00 | 83.00 |" in (tmp_path / "b" / "report.md").read_text()
    summary = render_report(db_path, tmp_path / "a", kind="accuracy")
    assert {c["std"] for s in summary["settings"] for c in s["cells"]} == {None}
