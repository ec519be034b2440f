"""Adding a plug-in is one class and one registry line: an objective with a new setting `gamma`,
registered at run time, is offered by `--help`, read from YAML and sweeps, checked against its
declared range, and named in reports, without touching any other module."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import yaml

from crossdistill.cli.main import main
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.moments import Moments
from crossdistill.objectives import OBJECTIVES, Objective
from crossdistill.objectives.base import match_pair
from crossdistill.objectives.soft import mixed_moments
from crossdistill.params import param
from crossdistill.problem import QuadraticProblem
from crossdistill.reporting import aggregate, load_runs
from sweep_helpers import write_npz_pair


@dataclass
class Gamma(Objective):
    """Soft cross distillation with the teacher's share in the student's input named gamma."""

    name = "gamma"
    gamma: float = param(0.5, "share of the teacher's input in the student's", low=0, high=1)

    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem:
        tt, ss, ts = mixed_moments(m, 0.0, self.gamma)
        return match_pair(w_teacher, ts, ss, tt)


@pytest.fixture
def gamma_registered(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "gamma", Gamma)  # the one registry line


def test_gamma_is_a_flag_with_its_help_and_range(gamma_registered, capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--gamma GAMMA" in out
    assert "objective gamma: share of the teacher's input in the student's [in [0, 1]; default 0.5]" in out
    assert "gamma" in out.split("--objective {")[1].split("}")[0]


def test_gamma_is_read_from_yaml_forms_and_checked(gamma_registered):
    sectioned = CompressConfig.from_dict(yaml.safe_load("objective: {name: gamma, params: {gamma: 0.2}}"))
    flat = CompressConfig.from_dict({"objective": "gamma", "gamma": 0.2})
    dotted = CompressConfig.from_dict({"objective": "gamma", "objective.gamma": 0.2})
    assert sectioned == flat == dotted
    assert sectioned.objective.params == {"gamma": 0.2}
    assert CompressConfig(objective="gamma").objective.params == {"gamma": 0.5}  # the declared default
    with pytest.raises(CrossDistillError, match=r"objective gamma: gamma must lie in \[0, 1\], got 1.5"):
        CompressConfig(objective="gamma", gamma=1.5)
    with pytest.raises(CrossDistillError, match=r"unknown setting \['gama'\]; its settings are \['gamma'\]"):
        CompressConfig.from_dict({"objective": {"name": "gamma", "params": {"gama": 0.2}}})
    with pytest.raises(CrossDistillError, match="gamma=0.2 is a setting of objective gamma"):
        CompressConfig(objective="soft", gamma=0.2)


def test_gamma_sweeps_and_reports_by_itself(gamma_registered, tmp_path, capsys):
    train, test = write_npz_pair(tmp_path / "data")
    sweep = tmp_path / "g.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "gamma",
        "base": {"model": "fashion_cnn", "data": str(train), "eval_data": str(test), "keep": 0.5,
                 "objective": "gamma"},
        "grid": {"gamma": [0.1, 0.4], "shots": [1], "seed": [0]},
    }))
    db = tmp_path / "g.sqlite"
    assert main(["sweep", str(sweep), "--db", str(db)]) == 0
    err = capsys.readouterr().err
    assert "gamma(gamma=0.1)" in err and "gamma(gamma=0.4)" in err  # the sweep log
    (group,) = aggregate(load_runs(db))
    assert sorted(group.methods) == ["gamma(gamma=0.1)", "gamma(gamma=0.4)"]
    out = tmp_path / "report"
    assert main(["report", str(db), "--out", str(out)]) == 0
    assert "| gamma(gamma=0.1) |" in (out / "report.md").read_text()
    # a single run's report names it too
    run = tmp_path / "run"
    assert main(["compress", "--model", "fashion_cnn", "--data", str(train), "--eval-data", str(test),
                 "--shots", "1", "--objective", "gamma", "--gamma", "0.3", "--no-latency", "--quiet",
                 "--out", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["objective"] == "gamma(gamma=0.3)"
    assert report["config"]["objective"] == {"name": "gamma", "params": {"gamma": 0.3}}


def test_true_false_settings_are_switches():
    """A declared bool is a --name / --no-name switch, and only a given switch overrides the file."""
    import argparse

    from crossdistill.cli.config_options import add_config_options, config_from_args

    parser = argparse.ArgumentParser()
    add_config_options(parser)
    cfg = config_from_args(parser.parse_args(["--prune-classifier", "--no-finetune-augment"]))
    assert cfg.method.params["prune_classifier"] is True and cfg.finetune["augment"] is False
    cfg = config_from_args(parser.parse_args([]))
    assert cfg.method.params["prune_classifier"] is False and cfg.finetune["augment"] is True
