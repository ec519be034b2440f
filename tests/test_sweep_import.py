"""Importing the JSON lines of the retired benchmark scripts as rows (crossdistill.sweep.importer)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from crossdistill.cli.main import main
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.reporting import load_runs
from crossdistill.sweep import SweepDB, config_hash, resume_state
from crossdistill.sweep.importer import import_jsonl

ENV = {"CROSSDISTILL_DATA": "/data"}
LINE = {"method": "ours", "model": "resnet20", "prune": "channels", "keep": "0.5", "sparsity": None, "shots": 1,
        "seed": 0, "eval": "test", "n_eval": 1000, "top1": 67.0, "teacher_top1": 91.5, "params": 135754,
        "flops": 40994048, "compress_seconds": 1.5, "wall_seconds": 3.0, "solver": "closed-form(selection=obs)",
        "objective": "soft(alpha=0,beta=0.3)", "damping": 0.1, "finetune_epochs": 0, "finetune_bn": "auto",
        "overrides": [], "tag": ""}


def jsonl(path: Path, *lines: dict) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_comparison_lines_become_rows_that_the_equivalent_sweep_counts_as_done(tmp_path):
    lines = jsonl(tmp_path / "c.jsonl", LINE,
                  {**LINE, "method": "ours-mixed", "objective": "mixed(mu=0.9)", "top1": 64.0},
                  {**LINE, "method": "cp+ft", "finetune_epochs": 50, "solver": "closed-form(selection=lasso)",
                   "objective": "nocross", "top1": 61.0, "device": "cuda (NVIDIA H100 80GB HBM3)"},
                  {**LINE, "method": "ours+ft(hints)", "finetune_epochs": 300, "top1": 76.0, "finetune_bn": "frozen",
                   "overrides": ['finetune_mode="hints"', "finetune_lr=1e-3", 'finetune_bn="frozen"']})
    db = tmp_path / "r.sqlite"
    s = import_jsonl(lines, db, "comparison", env=ENV)
    assert (s.lines, s.imported, s.already, s.repeated) == (4, 4, 0, 0)
    rows = load_runs(db)
    assert [r.student_top1 for r in rows] == [67.0, 64.0, 61.0, 76.0]
    assert all(r.git_commit is None and r.crossdistill_version is None for r in rows)  # code unknown
    assert rows[0].source.startswith(f"imported from {lines}:1; method ours")
    assert "device cuda (NVIDIA H100" in rows[2].source and rows[2].config["device"] == "cuda"  # not run here
    assert rows[2].config["baseline"] == "cp" and rows[2].config["finetune.epochs"] == 50
    assert rows[0].report["imported_line"] == LINE
    assert rows[0].config["eval_data"] == "/data/cifar10/cifar10_test1000.npz" and rows[0].config["damping"] is None
    # The same runs written as a sweep would write them: each is recorded, so a sweep runs none again.
    base = {"model": "resnet20", "weights": "/data/weights/resnet20-12fca82f.th", "keep": 0.5, "shots": 1,
            "data": "/data/cifar10/cifar10_train.npz", "eval_data": "/data/cifar10/cifar10_test1000.npz"}
    # The cp line names no mode: it ran kd, the default then, and the sweep that counts it says kd.
    runs = [{}, {"objective": "mixed", "mu": 0.9},
            {"baseline": "cp", "finetune_epochs": 50, "finetune_mode": "kd", "device": "cuda"},
            {"finetune_epochs": 300, "finetune_mode": "hints", "finetune_lr": 1e-3, "finetune_bn": "frozen"}]
    hashes = [config_hash(CompressConfig.from_dict({**base, **r})) for r in runs]  # no validate(): no GPU here
    with SweepDB(db, readonly=True) as d:
        assert set(hashes) == set(resume_state(d).status)


def test_a_later_line_of_the_same_run_wins_and_held_runs_are_kept(tmp_path):
    db = tmp_path / "r.sqlite"
    import_jsonl(jsonl(tmp_path / "a.jsonl", LINE), db, "comparison", env=ENV)
    s = import_jsonl(jsonl(tmp_path / "b.jsonl", {**LINE, "top1": 1.0}, {**LINE, "seed": 1, "top1": 2.0},
                           {**LINE, "seed": 1, "top1": 3.0}), db, "comparison", env=ENV)
    assert (s.imported, s.already, s.repeated) == (1, 1, 1)
    assert sorted(r.student_top1 for r in load_runs(db)) == [3.0, 67.0]


def test_pins_set_what_the_lines_do_not_record(tmp_path):
    old = {k: v for k, v in LINE.items() if k not in ("damping", "finetune_bn")}
    db = tmp_path / "r.sqlite"
    import_jsonl(jsonl(tmp_path / "a.jsonl", old), db, "comparison", env=ENV, pins={"damping": 0.001})
    assert load_runs(db)[0].config["damping"] == 0.001


def test_recorded_damping_other_than_the_automatic_one_is_a_setting(tmp_path):
    db = tmp_path / "r.sqlite"
    import_jsonl(jsonl(tmp_path / "a.jsonl", {**LINE, "damping": 0.001}, {**LINE, "shots": 5, "damping": 0.02}),
                 db, "comparison", env=ENV)
    assert [r.config["damping"] for r in load_runs(db)] == [0.001, None]  # 0.02 = 0.1/K at K=5


def test_other_formats(tmp_path):
    db = tmp_path / "r.sqlite"
    grid = {"model": "resnet56", "keep": "0.5", "point": "soft:0:0.3 sel=l1 d=0.1", "objective": "soft:0:0.3",
            "selection": "l1", "damping": 0.1, "shots": 1, "seed": 0, "eval": "val", "n_eval": 1000, "top1": 86.0,
            "teacher_top1": 100.0, "compress_seconds": 2.0, "wall_seconds": 5.0}
    import_jsonl(jsonl(tmp_path / "g.jsonl", grid), db, "objective_grid", env=ENV)
    push = {"variant": "hints", "settings": {"epochs": 300, "lr": 0.001, "hint_weight": 1, "logit_weight": 0,
                                            "hints": "layers"}, "objective": "soft", "start": "cd", "damping": 0.1,
            "shots": 1, "seed": 0, "eval": "test", "n_eval": 1000, "top1": 86.3, "cd_top1": 80.0, "cd_seconds": 2.0,
            "ft_seconds": 50.0, "seconds": 52.0, "tag": "soft-start", "curve": {"300": 86.3}}
    import_jsonl(jsonl(tmp_path / "p.jsonl", push), db, "accuracy_push", env=ENV)
    quant = [{"key": {"model": "resnet20", "kind": "teacher"}, "top1": 91.5, "flops": 81102080, "size": 1084392},
             {"key": {"model": "resnet20", "kind": "quant", "label": "GPTQ-soft", "bits": 4, "K": 5, "seed": 1},
              "top1": 90.0, "flops": 81102080, "size": 148706, "n_eval": 1000, "compress_s": 4.5,
              "solver": "gptq(act_order=True)", "objective": "soft(alpha=0.25,beta=0.25)", "method": "quant(bits=4)"}]
    s = import_jsonl(jsonl(tmp_path / "q.jsonl", *quant), db, "quant_lowrank", env=ENV)
    assert (s.imported, s.not_runs) == (1, 1)
    g, p, q = load_runs(db)
    assert g.config["eval_data"] == "/data/cifar10/cifar10_train.npz[49000:]" and g.config["solver.selection"] == "l1"
    assert (g.config["objective"], g.config["objective.beta"], g.config["damping"]) == ("soft", 0.3, 0.1)
    assert p.config["finetune.mode"] == "hints" and p.config["finetune.epochs"] == 300
    assert p.config["finetune.bn"] == "frozen" and p.report["imported_line"]["curve"] == {"300": 86.3}
    assert (q.config["method"], q.config["method.bits"], q.config["objective.alpha"]) == ("quant", 4, 0.25)
    assert q.teacher_top1 == 91.5 and q.report["size_bytes"] == 148706


def test_bad_lines_and_formats_are_errors(tmp_path):
    db = tmp_path / "r.sqlite"
    with pytest.raises(CrossDistillError, match="unknown import format"):
        import_jsonl(jsonl(tmp_path / "a.jsonl", LINE), db, "nope")
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps(LINE) + "\n{not json\n")
    with pytest.raises(CrossDistillError, match=r"b.jsonl:2: cannot import"):
        import_jsonl(bad, db, "comparison")
    assert not db.exists()  # nothing written when a line fails


def test_cli_import(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CROSSDISTILL_DATA", "/data")
    lines = jsonl(tmp_path / "a.jsonl", LINE)
    db = tmp_path / "r.sqlite"
    assert main(["sweep", "--import", str(lines), "--format", "comparison", "--db", str(db),
                 "--set", "finetune_bn=frozen"]) == 0
    assert "1 rows added" in capsys.readouterr().out
    conn = sqlite3.connect(str(db))
    assert conn.execute("SELECT sweep, git_commit FROM runs").fetchall() == [("import:a", None)]
    assert conn.execute("SELECT sweep, n_runs FROM invocations").fetchall() == [("import:a", 1)]
    conn.close()
    assert main(["sweep", "--import", str(lines), "--db", str(db)]) == 2  # no --format
    assert main(["report", str(db), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "imported crossdistill unknown at commit unknown (1)" in out and f"Imported from `{lines}`" in out
