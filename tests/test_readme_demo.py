"""README's demo figures are the demo's own: README holds them between `demo-figures` markers,
and they must equal the committed demo report (tests/data/demo_figures.json, copied from
`make demo` by `make demo-figures`) and, when the checkout has one, the local
crossdistill-demo/report.json of a `make demo` run with the same settings."""
from __future__ import annotations

import io
import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from crossdistill.demo import DEFAULT_OUT, DemoOptions, TeacherRecipe, compress_config, run_demo
from crossdistill.demo.figures import figures, readme_text, same_run
from sweep_helpers import fashion_like

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = Path(__file__).parent / "data" / "demo_figures.json"
MARKED = re.compile(r"<!-- demo-figures -->(.*?)<!-- /demo-figures -->", re.S)


def readme_figures() -> str:
    found = MARKED.findall((ROOT / "README.md").read_text())
    assert len(found) == 1, "README must hold the demo's figures between one pair of demo-figures markers"
    return " ".join(found[0].split())


def test_readme_figures_are_the_committed_demo_reports():
    fig = json.loads(COMMITTED.read_text())
    assert readme_figures() == readme_text(fig), (
        f"README's demo figures differ from {COMMITTED.name}; README should say: {readme_text(fig)}")


def test_committed_demo_report_has_todays_demo_settings():
    """A change of the demo's defaults (recipe, K, keep, objective) makes the committed figures
    stale: run `make demo` and `make demo-figures` again."""
    from crossdistill.compression import METHODS
    from crossdistill.pipeline import build_objective

    fig = json.loads(COMMITTED.read_text())
    opts = DemoOptions()
    cfg = compress_config(opts)
    assert fig["recipe"] == asdict(TeacherRecipe())
    assert fig["settings"]["shots"] == opts.shots and fig["settings"]["seed"] == opts.seed
    assert fig["settings"]["method"] == METHODS.build(cfg.method.name, cfg.method.params).describe()
    assert fig["settings"]["objective"] == build_objective(cfg).describe()
    assert fig["n_eval"] == 10000  # the full Fashion-MNIST test set, as README says


def test_readme_figures_are_those_of_the_local_make_demo():
    local = ROOT / DEFAULT_OUT / "report.json"
    if not local.is_file():
        pytest.skip(f"no {DEFAULT_OUT}/report.json: `make demo` has not run in this checkout")
    fig = figures(json.loads(local.read_text()))
    if not same_run(fig, json.loads(COMMITTED.read_text())):
        pytest.skip(f"{local} was made with other settings or another teacher than the committed demo report "
                    "(a teacher trained on another CPU or thread count rounds differently)")
    assert readme_figures() == readme_text(fig), (
        "`make demo` printed other figures than README quotes: if that is intended, run `make demo-figures` "
        f"and put this in README: {readme_text(fig)}")


def test_figures_read_a_demo_report(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    opts = DemoOptions(out=tmp_path / "demo", recipe=TeacherRecipe(epochs=1, batch_size=32), show_progress=False,
                       threads=1)
    summary = run_demo(opts, train=fashion_like(200, 0), test=fashion_like(50, 1), log=io.StringIO())
    written = json.loads((tmp_path / "demo" / "report.json").read_text())
    fig = figures(written)
    assert fig["cross_distilled"]["top1"] == summary["cross_distilled"]["top1"]
    text = readme_text(fig)
    assert f"student {summary['cross_distilled']['top1']:.2f} %" in text
    assert f"prune-only at the same size {summary['prune_only']['top1']:.2f} %" in text
    assert same_run(fig, fig) and not same_run(fig, {**fig, "n_eval": 1})
    # Another teacher from the same recipe (another machine's rounding) is another run.
    from crossdistill.models import load_model
    from crossdistill.persistence.files import tensors_checksum

    teacher = load_model(written["teacher"]["weights"], "fashion_cnn")
    assert fig["teacher_weights"]["sha256"] == tensors_checksum(teacher.state_dict())
    assert fig["teacher_weights"]["threads"] == 1
    other = {**fig, "teacher_weights": {**fig["teacher_weights"], "sha256": "0" * 64}}
    assert not same_run(fig, other)
