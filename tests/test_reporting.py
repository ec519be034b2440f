"""Reports from a hand-built sweep database: aggregation, markdown tables, plots."""
from __future__ import annotations

import json
import statistics

import pytest
from matplotlib.container import ErrorbarContainer

from crossdistill.cli.main import main
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.reporting import (
    accuracy_table,
    accuracy_vs_flops,
    accuracy_vs_shots,
    aggregate,
    detail_table,
    load_runs,
    mean_std,
    method_labels,
    render_report,
)
from crossdistill.reporting.results import distinct_labels
from crossdistill.sweep import SweepDB, config_hash
from crossdistill.sweep.runner import row_for

BASE = {"model": "fashion_cnn", "data": "train.npz", "eval_data": "test.npz", "keep": 0.5, "latency": False}
TEACHER = {"teacher_top1": 91.0, "teacher_params": 1000, "teacher_flops": 4_000_000, "n_eval": 500}


def add(db: SweepDB, top1: float | None, status: str = "ok", flops: int = 1_500_000, **values) -> None:
    cfg = CompressConfig.from_dict({**BASE, **values}).validate()
    row = {
        **row_for(cfg, config_hash(cfg), "hand"), "status": status,
        "error": None if status == "ok" else "boom", "student_top1": top1,
        "student_params": 500, "student_flops": flops, "compress_seconds": 2.0, "run_seconds": 3.0,
        **(TEACHER if status == "ok" else {}),
    }
    db.record_run(row)


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "hand.sqlite"
    with SweepDB(path) as db:
        # prune-only: K=1 seeds → 10, 20, 30 (mean 20, sample std 10); K=5 one seed → 40
        for seed, v in enumerate([10.0, 20.0, 30.0]):
            add(db, v, objective="nocross", solver="prune-only", shots=1, seed=seed)
        add(db, 40.0, objective="nocross", solver="prune-only", shots=5, seed=0)
        # mixed mu 0.6: K=1 → 50, 54 ; K=5 → 80, 82, 84 ; plus a failure that must not count
        add(db, 50.0, objective="mixed", mu=0.6, shots=1, seed=0)
        add(db, 54.0, objective="mixed", mu=0.6, shots=1, seed=1)
        for seed, v in enumerate([80.0, 82.0, 84.0]):
            add(db, v, objective="mixed", mu=0.6, shots=5, seed=seed)
        add(db, None, status="failed", objective="mixed", mu=0.6, shots=5, seed=3)
        # the same seed again with only latency changed: counts once (the later row)
        add(db, 84.0, objective="mixed", mu=0.6, shots=5, seed=2, latency=True)
        # another compression level (a second setting) for the FLOPs plot
        add(db, 70.0, objective="mixed", mu=0.6, shots=5, seed=0, keep=0.75, flops=2_500_000)
        add(db, 30.0, objective="nocross", solver="prune-only", shots=5, seed=0, keep=0.75, flops=2_500_000)
    return path


def test_mean_std_is_sample_std():
    assert mean_std([10.0, 20.0, 30.0]) == (20.0, 10.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_aggregate_mean_std_per_method_and_k(db_path):
    runs = load_runs(db_path)
    assert len(runs) == 13
    groups = aggregate(runs)
    assert [g.config["method.keep"] for g in groups] == [0.5, 0.75]
    g = groups[0]
    assert g.methods == ["prune-only(selection=obs)", "mixed(mu=0.6)"] and g.x_values == [1, 5]
    c = g.cell("prune-only(selection=obs)", 1)
    assert (c.mean, c.std, c.n_seeds, c.seeds, c.n_eval) == (20.0, 10.0, 3, [0, 1, 2], 500)
    assert g.cell("prune-only(selection=obs)", 5).top1 == [40.0]
    c = g.cell("mixed(mu=0.6)", 5)
    assert c.n_seeds == 3 and c.mean == 82.0 and c.std == pytest.approx(statistics.stdev([80, 82, 84]))
    assert g.cell("mixed(mu=0.6)", 1).std == pytest.approx(statistics.stdev([50, 54]))
    assert (g.teacher_top1, g.n_eval) == (91.0, 500)


def test_markdown_tables(db_path):
    g = aggregate(load_runs(db_path))[0]
    table = accuracy_table(g)
    assert "| method | K=1 | K=5 |" in table
    assert "| prune-only(selection=obs) | 20.00 ± 10.00 | 40.00 |" in table  # one seed: no ±
    assert "| mixed(mu=0.6) | 52.00 ± 2.83 | 82.00 ± 2.00 |" in table
    assert "500 test images" in table
    detail = detail_table(g)
    assert "| prune-only(selection=obs) | 1 | 20.00 | 10.00 | 3 | 500 | 1.50 | 0.00 | – | – | 2.0 | 3.0 |" in detail


def test_method_labels_never_merge_different_methods():
    a = {**BASE, "objective": "mixed", "mu": 0.6, "selection": "obs"}
    b = {**a, "selection": "l1"}
    c = {**BASE, "objective": "soft", "alpha": 0.5, "beta": 0.5, "solver": "paper"}
    labels = sorted(method_labels([a, b, c]).values())
    assert labels == ["mixed(mu=0.6)", "mixed(mu=0.6) [closed-form(selection=l1)]",
                      "soft(alpha=0.5,beta=0.5) [paper(iters=3000,lr=0.001)]"]
    d = {**BASE, "objective": "mixed", "mu": None}  # the model's default mu is named
    assert list(method_labels([d]).values()) == ["mixed(mu=0.6)"]


def test_accuracy_vs_k_plot_has_one_errorbar_line_per_method(db_path):
    g = aggregate(load_runs(db_path))[0]
    fig = accuracy_vs_shots(g)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(g.methods) == 2
    assert [b.get_label() for b in bars] == g.methods
    line, _, (yerr,) = bars[0].lines
    assert list(line.get_xdata()) == [1, 5] and list(line.get_ydata()) == [20.0, 40.0]
    segs = yerr.get_segments()  # error bar of K=1 spans mean ± std
    assert segs[0][0][1] == pytest.approx(10.0) and segs[0][1][1] == pytest.approx(30.0)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["prune-only(selection=obs)", "mixed(mu=0.6)", "teacher (91.00 %)"]
    assert "K (training images per class)" == ax.get_xlabel() and "%" in ax.get_ylabel()
    assert "fashion_cnn" in ax.get_title() and "500 test images" in ax.get_title() and "over 3 seeds" not in ax.get_title()


def test_one_seed_points_are_hollow_when_the_others_are_means(db_path):
    """A one-seed point (prune-only at K=5) was drawn like the means of three, and the title
    only said 'over seeds'."""
    from matplotlib.colors import to_rgba

    g = aggregate(load_runs(db_path))[0]
    (ax,) = accuracy_vs_shots(g).axes
    assert "mean ± std over 1 to 3 seeds; hollow markers: one seed" in ax.get_title()
    hollow = [ln for ln in ax.lines if ln.get_linestyle() == "None" and to_rgba(ln.get_markerfacecolor()) == (1, 1, 1, 1)]
    assert [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in hollow] == [([5], [40.0])]


def test_a_legend_of_more_than_four_entries_goes_beside_the_axes(db_path):
    """Seven methods and the teacher inside the axes covered the prune-only line."""
    with SweepDB(db_path) as db:
        for mu in (0.1, 0.2, 0.3):
            add(db, 60.0 + 10 * mu, objective="mixed", mu=mu, shots=1, seed=0)
    g = aggregate(load_runs(db_path))[0]
    (ax,) = accuracy_vs_shots(g).axes
    assert len(ax.get_legend().get_texts()) == 6
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1  # right of the axes


def test_accuracy_vs_flops_joins_compression_levels(db_path):
    groups = aggregate(load_runs(db_path))
    fig = accuracy_vs_flops(groups)  # K=5 is the largest K both settings have
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [b.get_label() for b in bars] == ["prune-only(selection=obs)", "mixed(mu=0.6)"]
    xs = [list(b.lines[0].get_xdata()) for b in bars]
    assert xs == [[1.5, 2.5], [1.5, 2.5]]  # MFLOPs, sorted
    assert list(bars[1].lines[0].get_ydata()) == [82.0, 70.0]
    assert "MFLOPs" in ax.get_xlabel() and "K=5" in ax.get_title()


def test_render_report_writes_markdown_plots_and_json(db_path, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(db_path), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    summary = json.loads((out / "report.json").read_text())
    assert len(summary["plots"]) == 3  # two settings × accuracy vs K, one accuracy vs FLOPs
    for png in summary["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in md
    assert "## Failed runs" in md and "boom" in md
    assert "13 runs recorded: 12 ok, 1 failed" in md
    assert "report.md" not in capsys.readouterr().err
    with pytest.raises(CrossDistillError, match="already exists"):
        render_report(db_path, out)
    render_report(db_path, out, force=True)


def test_report_errors(tmp_path):
    with pytest.raises(CrossDistillError, match="not found"):
        load_runs(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(CrossDistillError, match="not a crossdistill results database"):
        load_runs(tmp_path / "junk.sqlite")
    SweepDB(tmp_path / "empty.sqlite").close()
    with pytest.raises(CrossDistillError, match="no runs"):
        render_report(tmp_path / "empty.sqlite", tmp_path / "o")


def test_runs_with_n_samples_get_their_own_axis(tmp_path):
    path = tmp_path / "n.sqlite"
    with SweepDB(path) as db:
        for n, v in ((20, 60.0), (50, 70.0)):
            add(db, v, objective="mixed", mu=0.6, shots=None, n_samples=n, seed=0)
        add(db, 65.0, objective="mixed", mu=0.6, shots=2, seed=0)
    groups = aggregate(load_runs(path))
    assert sorted(g.x_field for g in groups) == ["n_samples", "shots"]
    g = next(g for g in groups if g.x_field == "n_samples")
    assert g.x_values == [20, 50] and "| method | N=20 | N=50 |" in accuracy_table(g)
    assert accuracy_vs_shots(g).axes[0].get_xlabel() == "N (training images)"


def test_the_run_summary_names_k_only_when_the_draw_had_one():
    from crossdistill.run_outputs import format_summary

    base = {"model": "m", "method": "channels(keep=0.5)", "objective": "soft", "solver": "closed-form",
            "n_samples": 64, "seed": 0, "sampler": "random", "compress_seconds": 1.0}
    assert "few-shot: 50 images (K=5, seed 0, random)" in format_summary({**base, "n_samples": 50, "shots": 5})
    # --n-samples N draws without classes: "K=None" read as a bug.
    assert "few-shot: 64 images (seed 0, random)" in format_summary({**base, "shots": None})


def test_the_run_summary_names_a_baseline_and_a_quantized_size_not_zero_codes():
    """A baseline's summary.txt named the default objective and solver, never the baseline; a
    quantized student's zero codes were printed as 'nonzero' (read as sparsity) and its size,
    the figure quantization is for, was missing."""
    from crossdistill.run_outputs import format_summary

    base = {"model": "m", "objective": "soft", "solver": "closed-form", "n_samples": 50, "shots": 5, "seed": 0,
            "sampler": "random", "compress_seconds": 1.0, "n_eval": 100}
    t = {"top1": 90.0, "params": 1000, "nonzero_params": 1000, "flops": 2e6}
    quant = {**base, "method": "quant(bits=4)", "teacher": t, "model_size": {"total": 1024},
             "student": {**t, "top1": 89.0, "nonzero_params": 940}}
    text = format_summary(quant)
    assert "nonzero" not in text
    assert "size (KiB)" in text and text.split("size (KiB)")[1].split()[:2] == ["3.9", "1.0"]
    # The teacher counted as the student is (BatchNorm statistics too) where the report has it.
    counted = format_summary({**quant, "teacher": {**t, "size_bytes": 5120}})
    assert counted.split("size (KiB)")[1].split()[:2] == ["5.0", "1.0"]
    sparse = format_summary({**quant, "method": "sparsity(sparsity=0.5)", "model_size": None})
    assert "nonzero" in sparse and "size (KiB)" not in sparse
    assert format_summary({**base, "method": "channels(keep=0.5)", "baseline": "l1"}).startswith(
        "m  baseline l1  channels(keep=0.5)")


def test_accuracy_vs_flops_does_not_join_a_global_budget_to_the_uniform_line(tmp_path):
    """Uniform keep 0.5 and a global budget at the same FLOPs were one 'soft' line, zig-zagging
    between two points at one x; each budget is a line of its own, named by it."""
    path = tmp_path / "budget.sqlite"
    with SweepDB(path) as db:
        for keep, flops in ((0.5, 1_500_000), (0.75, 2_500_000)):
            add(db, 60.0 + 10 * keep, objective="soft", shots=5, seed=0, keep=keep, flops=flops)
            add(db, 70.0 + 10 * keep, objective="soft", shots=5, seed=0, keep=keep, flops=flops - 100_000,
                budget="global")
    fig = accuracy_vs_flops(aggregate(load_runs(path)))
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    labels = [b.get_label() for b in bars]
    assert len(bars) == 2 and any("budget=global" in lab for lab in labels) and len(set(labels)) == 2
    for b in bars:
        assert len(b.lines[0].get_xdata()) == 2  # each line joins its own two levels


def test_runs_scored_on_a_held_out_part_of_the_training_file_are_called_validation(tmp_path):
    """The defaults were chosen on train.npz[49000:]; the report called those 1000 images 'test
    images' (beside a teacher at 100 %) under the same heading as the test runs."""
    path = tmp_path / "val.sqlite"
    with SweepDB(path) as db:
        add(db, 70.0, objective="soft", shots=1, seed=0, data="train.npz[:49000]", eval_data="train.npz[49000:]")
        add(db, 60.0, objective="soft", shots=1, seed=0)
    val, test = sorted(aggregate(load_runs(path)), key=lambda g: g.eval_role, reverse=True)
    assert (val.eval_role, test.eval_role) == ("validation", "test")
    assert "500 validation images" in accuracy_table(val) and "500 test images" in accuracy_table(test)
    assert val.label != test.label and val.label.endswith("validation split")


def test_an_unset_damping_is_labelled_auto_not_none():
    """'nocross (damping=None)' beside 'nocross (damping=0.1)' read as no damping at all; unset is
    the 0.1/K default."""
    labels = method_labels([{**BASE, "objective": "nocross", "damping": None},
                            {**BASE, "objective": "nocross", "damping": 0.1}])
    assert sorted(labels.values()) == ["nocross (damping=0.1)", "nocross (damping=auto)"]


def test_one_seed_shows_no_spread_and_a_run_folder_is_named_as_such(db_path, tmp_path):
    g = aggregate(load_runs(db_path))[0]
    # K=5 of prune-only ran one seed: 'std 0.00' read as a measured spread of zero.
    assert "| prune-only(selection=obs) | 5 | 40.00 | – | 1 |" in detail_table(g)
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text("{}")
    with pytest.raises(Exception, match="is a run folder: its numbers are in"):
        load_runs(run)


def test_the_run_summary_names_the_fine_tune():
    """A 22-second fine-tune inside a 33-second run showed nowhere in summary.txt."""
    from crossdistill.run_outputs import format_summary

    base = {"model": "m", "method": "channels(keep=0.5)", "objective": "soft", "solver": "closed-form",
            "n_samples": 50, "shots": 5, "seed": 0, "sampler": "random", "compress_seconds": 33.4}
    text = format_summary({**base, "finetune": {"steps": 100, "seconds": 22.5, "bn": "frozen",
                                                "before": {"kd": 0.115}, "after": {"kd": 0.031}}})
    assert "fine-tune: 100 steps in 22.5 s, BatchNorm frozen; few-shot KD loss 0.115 -> 0.031" in text
    assert "fine-tune" not in format_summary(base)
    # hints mode trains on the hint loss: named, beside the KD check; views are counted in the draw line
    hints = format_summary({**base, "calibration_images": 150, "config": {"views": 2},
                            "finetune": {"mode": "hints", "steps": 20, "seconds": 7.9, "bn": "frozen",
                                         "hint_first": 0.165, "hint_last": 0.154,
                                         "before": {"kd": 1.9}, "after": {"kd": 1.58}}})
    assert "fine-tune (hints): 20 steps in 7.9 s, BatchNorm frozen; hint loss 0.165 -> 0.154; few-shot KD " \
           "loss 1.9 -> 1.58" in hints
    assert "few-shot: 50 images (K=5, seed 0, random; 150 in the solve with 2 views each)" in hints


def test_views_settings_without_views_do_not_split_a_method():
    """Rows stored before views existed resolve the views policy to today's default, rows stored
    after hold the old one: with no views taken both are one method, not two labels."""
    a = {**BASE, "objective": "nocross"}
    b = {**a, "views": 0, "views_policy": "affine", "views_mixup": 0.0}
    assert len(set(method_labels([a, b]).values())) == 1
    c = {**a, "views": 4, "views_policy": "affine"}
    assert len(set(method_labels([a, c]).values())) == 2


def test_fine_tune_settings_without_a_fine_tune_do_not_split_a_method(tmp_path):
    """The sweep counts runs that differ only in an idle fine-tune setting as one run; the report
    showed them as two methods averaged over different seeds (a sweep file that pinned
    finetune_lr, or rows of an older version that stored the then-default mode kd)."""
    a = {**BASE, "objective": "nocross"}
    assert len(set(method_labels([a, {**a, "finetune_lr": 0.001}, {**a, "finetune_mode": "kd"}]).values())) == 1
    tuned = {**a, "finetune_epochs": 2}
    assert len(set(method_labels([tuned, {**tuned, "finetune_lr": 0.001}]).values())) == 2
    path = tmp_path / "idle.sqlite"
    with SweepDB(path) as db:
        add(db, 60.0, objective="nocross", shots=1, seed=0, finetune_lr=0.001)
        for seed, v in enumerate([62.0, 64.0]):
            add(db, v, objective="nocross", shots=1, seed=seed)
    (group,) = aggregate(load_runs(path))
    # One hash: seed 0 was recorded once, with the pinned setting, and counts for the method.
    assert group.methods == ["nocross"] and group.cells[("nocross", 1)].top1 == [60.0, 64.0]


def test_data_with_splits_of_its_own_given_for_both_is_scored_on_its_test_split(tmp_path):
    # `data: fashion-mnist, eval_data: fashion-mnist` (configs/smoke.yaml) was called a
    # validation split of 10000 images: the name reads the test split as evaluation data.
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "photos" / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "photos" / split / "a" / "x.png")
    path = tmp_path / "splits.sqlite"
    with SweepDB(path) as db:
        add(db, 70.0, objective="soft", shots=1, seed=0, data="fashion-mnist", eval_data="fashion-mnist")
        add(db, 71.0, objective="soft", shots=1, seed=1, data="fashion-mnist", eval_data="fashion-mnist[:500]")
        photos = str(tmp_path / "photos")
        add(db, 72.0, objective="soft", shots=1, seed=2, data=photos, eval_data=photos)
        add(db, 73.0, objective="soft", shots=1, seed=3, data="train.npz", eval_data="train.npz[100:]")
    roles = sorted(g.eval_role for g in aggregate(load_runs(path)))
    assert roles.count("test") == 3 and roles.count("validation") == 1


def test_reading_a_database_leaves_its_bytes_and_no_side_files(db_path, tmp_path):
    # SQLite's read-only mode left -wal and -shm files beside a database it read (a committed
    # one showed up as changed files in git); reading writes nothing now.
    before = db_path.read_bytes()
    assert main(["report", str(db_path), "--out", str(tmp_path / "rep")]) == 0
    assert main(["sweep", "--db", str(db_path), "--dry-run", *_any_sweep(tmp_path)]) == 0
    assert sorted(p.name for p in db_path.parent.glob("hand.sqlite*")) == ["hand.sqlite"]
    assert db_path.read_bytes() == before


def _any_sweep(tmp_path) -> list[str]:
    cfg = tmp_path / "sw.yaml"
    cfg.write_text("base: {model: fashion_cnn, data: x.npz, shots: 1}\ngrid: {seed: [0]}\n")
    return [str(cfg)]


def _crashed_writer(tmp_path):
    """A WAL database whose writer died with rows in its -wal: the main file lacks them."""
    import shutil
    import sqlite3

    live = tmp_path / "live"
    live.mkdir()
    conn = sqlite3.connect(str(live / "w.sqlite"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
    dead = tmp_path / "dead"
    dead.mkdir()
    shutil.copy(live / "w.sqlite", dead / "w.sqlite")  # copied while open: as a killed writer leaves them
    shutil.copy(live / "w.sqlite-wal", dead / "w.sqlite-wal")
    conn.close()
    return dead / "w.sqlite"


def test_a_crashed_writers_rows_are_read_and_the_file_keeps_its_bytes(tmp_path):
    # Read-write (query_only) would checkpoint the -wal into the file on closing: a reader must not.
    from crossdistill.sweep.store import connect_readonly

    db = _crashed_writer(tmp_path)
    before = db.read_bytes()
    conn = connect_readonly(db)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (50,)
    conn.close()
    assert db.read_bytes() == before and (tmp_path / "dead" / "w.sqlite-wal").stat().st_size > 0


def test_a_database_on_a_disk_that_takes_no_writes(tmp_path, monkeypatch):
    # Read-only mode needs to make the -shm file beside a WAL database, which a read-only disk
    # refuses ("unable to open database file"): the main file alone is read (immutable) when it
    # holds every row, and refused, with the way out, when a -wal holds rows it lacks.
    import os
    import sqlite3

    from crossdistill.sweep.store import connect_readonly

    real_connect = sqlite3.connect
    opened = []

    def read_only_disk(database, *args, **kwargs):
        opened.append(database)
        if "mode=ro" in database or "mode=rw" in database:
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(database, *args, **kwargs)

    # What a WAL database in a folder that takes no new files raises (SQLITE_READONLY_DIRECTORY),
    # not "unable to open": the fallback went unused and the database was refused.
    def read_only_folder(database, *args, **kwargs):
        opened.append(database)
        if "mode=ro" in database or "mode=rw" in database:
            exc = sqlite3.OperationalError("attempt to write a readonly database")
            exc.sqlite_errorcode = 1544
            raise exc
        return real_connect(database, *args, **kwargs)

    whole = tmp_path / "whole.sqlite"
    real_connect(str(whole)).executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);")
    pending = _crashed_writer(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK)
    monkeypatch.setattr(sqlite3, "connect", read_only_disk)
    assert connect_readonly(whole).execute("SELECT count(*) FROM t").fetchone() == (2,)
    assert any("immutable=1" in u for u in opened)
    with pytest.raises(sqlite3.OperationalError, match="holds rows not yet in the database.*copy the database"):
        connect_readonly(pending)
    monkeypatch.setattr(sqlite3, "connect", read_only_folder)
    assert connect_readonly(whole).execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_a_database_named_through_a_symlink_is_read_beside_its_target(db_path, tmp_path):
    from crossdistill.reporting import load_runs

    link = tmp_path / "elsewhere" / "link.sqlite"
    link.parent.mkdir()
    link.symlink_to(db_path)
    assert len(load_runs(link)) == len(load_runs(db_path))
    assert sorted(p.name for p in link.parent.iterdir()) == ["link.sqlite"]
    assert sorted(p.name for p in db_path.parent.glob("hand.sqlite*")) == ["hand.sqlite"]


def test_runs_that_number_the_classes_otherwise_are_reported_apart(tmp_path):
    """Another class list numbers the test data otherwise, so the teacher scores otherwise: one
    heading over both put one teacher's score above the other's student."""
    path = tmp_path / "classes.sqlite"
    with SweepDB(path) as db:
        add(db, 60.0, objective="nocross", shots=1, seed=0)
        add(db, 61.0, objective="nocross", shots=1, seed=0, classes=[str(i) for i in range(10)])
    groups = aggregate(load_runs(path))
    assert len(groups) == 2
    headings = sorted(distinct_labels(groups).values())
    assert any("classes (the data's order)" in h for h in headings)
    assert any("classes 0, 1, 2, ... (10 names)" in h for h in headings)


def test_the_summary_counts_samples_not_images_for_inputs_that_are_no_images():
    from crossdistill.run_outputs import format_summary

    base = {"model": "m", "method": "channels", "objective": "soft", "solver": "closed-form", "seed": 0,
            "sampler": "random", "compress_seconds": 1.0, "n_samples": 20, "shots": 2, "n_eval": 30,
            "agreement": {"top1_agreement": 90.0, "output_error": 0.1}}
    sizes = {"params": 10, "flops": 2e6, "top1": 50.0}
    signal = format_summary({**base, "teacher": {**sizes, "input_size": [2, 64]}, "student": sizes})
    assert "few-shot: 20 samples (K=2" in signal and "on 30 test samples" in signal and "% of test samples" in signal
    image = format_summary({**base, "teacher": {**sizes, "input_size": [3, 32, 32]}, "student": sizes})
    assert "few-shot: 20 images (K=2" in image and "on 30 test images" in image


def test_plots_name_a_method_left_out_keep_a_readable_scale_and_short_titles(db_path, tmp_path):
    with SweepDB(db_path) as db:
        add(db, 60.0, objective="imitation", shots=1, seed=0)  # never run at K=5, the FLOPs plot's K
    groups = aggregate(load_runs(db_path))
    title = accuracy_vs_flops(groups).axes[0].get_title()
    assert "not run at K=5: imitation" in title.replace("\n", " ")
    fig = accuracy_vs_shots(next(g for g in groups if g.config.get("method.keep") == 0.75))
    lo, hi = fig.axes[0].get_ylim()
    assert hi - lo >= 5.0  # one point (70 %) does not fill the axis with a fraction of a point
    # A factory model's path: its file and function in the title, every line within the figure.
    group = groups[0]
    group.config = {**group.config, "model": "/very/" + "long_folder/" * 20 + "my_models.py:make_net"}
    title = accuracy_vs_shots(group).axes[0].get_title()
    assert title.startswith("my_models.py:make_net, ") and max(map(len, title.splitlines())) <= 80


def test_plot_names_stay_short_and_distinct_for_long_model_names():
    from crossdistill.reporting.kinds.base import slug

    a, b = slug("x" * 300 + ":make_a"), slug("x" * 300 + ":make_b")
    assert len(a) <= 80 and len(b) <= 80 and a != b
    assert slug("resnet20 · channels(keep=0.5)") == "resnet20-channels-keep-0.5"  # short ones as before


def test_a_setting_that_differs_between_methods_is_on_every_label():
    """Damping differed, yet only the two labels that met showed it: 'imitation' read as run at
    the 0.05 of the others."""
    labels = method_labels([{**BASE, "objective": "soft", "damping": 0.05},
                            {**BASE, "objective": "mixed", "mu": 0.75, "damping": 0.05},
                            {**BASE, "objective": "imitation"}])
    assert sorted(labels.values()) == ["imitation (damping=auto)", "mixed(mu=0.75) (damping=0.05)",
                                       "soft(alpha=0,beta=0.3) (damping=0.05)"]


def test_a_failed_run_names_the_run_setting_that_sets_it_apart(tmp_path):
    path = tmp_path / "f.sqlite"
    with SweepDB(path) as db:
        add(db, 50.0, objective="nocross", shots=1, seed=0, weights="good.th")
        add(db, None, status="failed", objective="nocross", shots=1, seed=0, weights="broken.th")
    summary = render_report(path, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "K=1 seed=0 (weights=broken.th) | boom |" in md
    assert summary["failures"] == [{"id": 2, "config": summary["failures"][0]["config"], "error": "boom"}]
    assert "weights=broken.th" in summary["failures"][0]["config"] and summary["unfinished"] == []
