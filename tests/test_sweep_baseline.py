"""The `baseline` run setting: a sweep row that runs a baseline of crossdistill.baselines."""
from __future__ import annotations

import json
import sqlite3

import pytest

from crossdistill.baselines import BASELINES
from crossdistill.config import CompressConfig
from crossdistill.config.sections import BASELINE_NAMES
from crossdistill.errors import CrossDistillError
from crossdistill.pipeline import run
from crossdistill.reporting import aggregate, load_runs
from crossdistill.sweep import canonical_config, canonical_json, config_hash, load_sweep, run_sweep
from sweep_helpers import fashion_like, write_npz_pair, write_sweep


def test_the_setting_offers_every_registered_baseline():
    assert set(BASELINE_NAMES) == set(BASELINES)  # spelled out in config/sections.py (import cycle)
    with pytest.raises(CrossDistillError, match="baseline must be one of"):
        CompressConfig(model="fashion_cnn", baseline="nope")


def test_the_default_leaves_every_hash_as_it_was():
    cfg = CompressConfig(model="fashion_cnn", shots=2)
    values = cfg.to_dict()
    assert values["baseline"] is None
    older = {k: v for k, v in values.items() if k != "baseline"}  # a config from before the setting
    assert config_hash(values) == config_hash(older) == config_hash(cfg)
    assert config_hash(cfg.updated(baseline="l1")) != config_hash(cfg)


def test_finetune_settings_identify_the_baselines_that_always_finetune():
    cfg = CompressConfig(model="fashion_cnn")
    for name in ("bp", "l1-finetune"):  # 200 epochs when finetune.epochs is 0
        b = cfg.updated(baseline=name)
        assert config_hash(b) != config_hash(b.updated(finetune_bn="frozen"))
        # Defined by their logit loss: mode kd whatever the config carried, and the stored config says so.
        assert b.finetune["mode"] == "kd" == b.updated(finetune_mode="hints").finetune["mode"]
    l1 = cfg.updated(baseline="l1")  # no fine-tune: its inactive settings do not count
    assert config_hash(l1) == config_hash(l1.updated(finetune_bn="frozen"))


def test_the_pipeline_refuses_a_baseline_it_is_not_given():
    cfg = CompressConfig(model="fashion_cnn", shots=1, baseline="l1")
    with pytest.raises(CrossDistillError, match="names baseline 'l1'"):
        run(cfg, show_progress=False, train=fashion_like(20))


def test_a_baseline_refuses_views_it_would_ignore():
    from crossdistill.baselines import get_baseline

    cfg = CompressConfig(model="fashion_cnn", shots=1, baseline="l1", views=4)
    with pytest.raises(CrossDistillError, match="views .* l1 does not use them"):
        run(cfg, show_progress=False, train=fashion_like(20), compress_fn=get_baseline("l1"))


def test_a_sweep_row_runs_the_baseline(tmp_path):
    train, test = write_npz_pair(tmp_path / "data")
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", train, test, grid={"shots": [1], "seed": [0]},
                                  runs=[{"baseline": "l1"}, {"objective": "nocross", "solver": "prune-only",
                                                             "selection": "l1"}]))
    db = tmp_path / "r.sqlite"
    assert run_sweep(spec, db).ok == 2
    conn = sqlite3.connect(str(db))
    reports = [json.loads(r) for (r,) in conn.execute("SELECT report FROM runs ORDER BY id")]
    conn.close()
    assert reports[0]["baseline"] == "l1" and "baseline" not in reports[1]
    assert reports[0]["solver"] == reports[1]["solver"]  # l1 is the L1-selected prune-only student
    (g,) = aggregate(load_runs(db))
    assert g.methods == ["baseline l1", "prune-only(selection=l1)"]
    assert g.cell("baseline l1", 1).top1 == g.cell("prune-only(selection=l1)", 1).top1
    bad = write_sweep(tmp_path / "b.yaml", train, test, runs=[{"baseline": "l2"}])
    with pytest.raises(CrossDistillError, match="baseline must be one of"):
        load_sweep(bad)


def test_the_hints_default_leaves_stored_kd_runs_where_the_mode_has_no_effect():
    """'hints' became the default after kd rows were stored: a run that trains nothing (BatchNorm
    recalibration alone) hashes as it did, one that trains under another loss is another run."""
    recal = CompressConfig(model="fashion_cnn", finetune_bn="recalibrate")
    assert recal.finetune["mode"] == "hints"
    assert config_hash(recal) == config_hash(recal.updated(finetune_mode="kd"))
    stored = json.loads(canonical_json(recal.updated(finetune_mode="kd").to_dict()))  # as a database keeps it
    assert config_hash(canonical_config(stored)) == config_hash(recal)
    trains = CompressConfig(model="fashion_cnn", finetune_epochs=5)
    assert config_hash(trains) != config_hash(trains.updated(finetune_mode="kd"))
