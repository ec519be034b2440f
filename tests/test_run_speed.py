"""Slow phases say something, and latency is timed only when asked: progress bars on stderr for
data loading, evaluation and timing (none with --quiet); `--latency` / `--threads` on compress,
and the threads and the machine's load recorded beside the figures."""
from __future__ import annotations

import json

import pytest
import torch

from crossdistill.cli.main import main
from crossdistill.config import CompressConfig
from crossdistill.evaluation import measure_latency, torch_threads
from sweep_helpers import write_npz_pair


@pytest.fixture
def data(tmp_path):
    return write_npz_pair(tmp_path / "data", n_train=40, n_test=20)


def _compress(data, out, *extra):
    import torch

    from crossdistill.models import create_model

    train, test = data
    weights = out.parent / "fashion_cnn.pt"  # a registered model without weights is warned about
    if not weights.exists():
        torch.save(create_model("fashion_cnn").state_dict(), weights)
    return ["compress", "--model", "fashion_cnn", "--weights", str(weights), "--data", str(train), "--eval-data",
            str(test), "--shots", "2", "--out", str(out), *extra]


def test_latency_is_off_unless_asked(data, tmp_path, capsys):
    assert CompressConfig().latency is False
    assert main(_compress(data, tmp_path / "a", "--quiet")) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["teacher"]["latency"] == [] and report["student"]["latency"] == []
    assert main(_compress(data, tmp_path / "b", "--quiet", "--no-latency")) == 0  # old scripts still run
    assert main(_compress(data, tmp_path / "c", "--quiet", "--latency", "--threads", "1")) == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    timed = report["student"]["latency"]
    assert [t["batch_size"] for t in timed] == [1, 128] and all(t["threads"] == 1 for t in timed)
    assert all("load_average" in t for t in timed)
    assert report["config"]["latency"] is True and report["config"]["threads"] == 1
    assert "ms (batch 1)" in capsys.readouterr().out


def test_threads_and_load_are_recorded_beside_the_figures(data, tmp_path):
    before = torch.get_num_threads()
    assert main(_compress(data, tmp_path / "r", "--quiet", "--threads", "2")) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["threads"] == 2 and report["config"]["threads"] == 2
    assert report["load_average"] is None or len(report["load_average"]) == 3
    assert torch.get_num_threads() == before  # the caller's setting comes back


def test_threads_must_be_positive(data, tmp_path, capsys):
    assert main(_compress(data, tmp_path / "r", "--threads", "0")) == 2
    assert "threads must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_progress_on_stderr_for_loading_evaluation_and_timing(data, tmp_path, capsys, monkeypatch):
    import time

    import crossdistill.progress as progress
    import crossdistill.pipeline as pipeline

    real = pipeline.load_image_data

    def slow_load(*args, **kwargs):
        time.sleep(0.3)  # a big data set
        return real(*args, **kwargs)

    # Bars appear once a phase has run PROGRESS_DELAY seconds (these tiny phases are quicker): now at once.
    monkeypatch.setattr(progress, "PROGRESS_DELAY", 0)
    monkeypatch.setattr(pipeline, "load_image_data", slow_load)
    assert main(_compress(data, tmp_path / "a", "--latency", "--threads", "1")) == 0
    err = capsys.readouterr().err
    for phase in ("loading train data", "loading test data", "evaluating teacher and student",
                  "timing teacher (batch 1)", "timing student (batch 128)"):
        assert phase in err, phase
    assert main(_compress(data, tmp_path / "b", "--latency", "--threads", "1", "--quiet")) == 0
    assert capsys.readouterr().err == ""


def test_torch_threads_restores_and_checks():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(Exception, match="threads must be >= 1"):
        with torch_threads(0):
            pass
    res = measure_latency(torch.nn.Conv2d(1, 2, 3), (1, 8, 8), warmup=1, repeats=2)
    assert res.load_average is None or res.load_average >= 0
