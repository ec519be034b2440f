"""The demo on a tiny synthetic Fashion-MNIST: teacher cache, report folder, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from crossdistill.cli.main import main
from crossdistill.demo import DemoOptions, TeacherRecipe, default_threads, fingerprint, run_demo, teacher_cache_dir
from sweep_helpers import fashion_like, write_fashion_idx

TINY = TeacherRecipe(epochs=1, batch_size=32)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def opts(tmp_path, name="demo", **kw):
    return DemoOptions(out=tmp_path / name, recipe=TINY, latency=False, show_progress=False, threads=1, **kw)


def test_demo_trains_once_then_uses_the_cache(tmp_path, capsys):
    train, test = fashion_like(200, 0), fashion_like(50, 1)
    first = run_demo(opts(tmp_path), train=train, test=test)
    assert first["teacher"]["cached"] is False and first["n_eval"] == 50
    files = sorted(p.name for p in teacher_cache_dir().iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    meta = json.loads((teacher_cache_dir() / files[0]).read_text())
    assert meta["test_top1"] == first["teacher"]["top1"] and meta["recipe"]["epochs"] == 1
    assert meta["data_sha256"] == fingerprint(train)

    out = tmp_path / "demo"
    assert {p.name for p in out.iterdir()} == {"report.md", "demo.png", "report.json", "student"}
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "student" / "config.yaml").is_file() and (out / "student" / "student.safetensors").is_file()
    md = (out / "report.md").read_text()
    assert "| cross-distilled |" in md and "| prune-only |" in md and "50 test images" in md
    printed = capsys.readouterr().out
    assert "top-1 (%)" in printed and "prune-only" in printed

    second = run_demo(opts(tmp_path, "demo2"), train=train, test=test)
    assert second["teacher"]["cached"] is True
    assert second["teacher"]["top1"] == first["teacher"]["top1"]
    # The cached figure is of the images it was scored on then, which a later --test-subset may change.
    out_err = capsys.readouterr()
    assert "% test top-1 on 50 test images when trained)" in out_err.out + out_err.err
    assert second["cross_distilled"]["top1"] == first["cross_distilled"]["top1"]  # deterministic
    s = second["cross_distilled"]
    assert s["params"] < first["teacher"]["params"] and s["flops"] < first["teacher"]["flops"]
    assert second["prune_only"]["flops"] == s["flops"]  # the baseline has the same size
    # The per-layer losses on a log axis are markers: a bar's length would depend on the axis' start.
    from crossdistill.demo import demo_figure

    losses = demo_figure(second).axes[1]
    assert not losses.patches and [line.get_marker() for line in losses.lines] == ["o", "s"]


def test_cache_key_follows_recipe_and_data(tmp_path):
    train, test = fashion_like(200, 0), fashion_like(50, 1)
    run_demo(opts(tmp_path), train=train, test=test)
    other = opts(tmp_path, "b")
    other.recipe = TeacherRecipe(epochs=1, batch_size=64)
    assert run_demo(other, train=train, test=test)["teacher"]["cached"] is False
    assert run_demo(opts(tmp_path, "c"), train=fashion_like(200, 5), test=test)["teacher"]["cached"] is False
    assert len(list(teacher_cache_dir().glob("*.safetensors"))) == 3


def test_corrupt_cached_teacher_is_retrained(tmp_path, capsys):
    train, test = fashion_like(200, 0), fashion_like(50, 1)
    run_demo(opts(tmp_path), train=train, test=test)
    (weights,) = teacher_cache_dir().glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    again = run_demo(opts(tmp_path, "d2"), train=train, test=test)
    assert again["teacher"]["cached"] is False
    assert "unreadable cached teacher" in capsys.readouterr().err
    assert run_demo(opts(tmp_path, "d3"), train=train, test=test)["teacher"]["cached"] is True


def test_demo_cli_on_an_idx_folder(tmp_path, capsys):
    folder = write_fashion_idx(tmp_path / "fmnist", n_train=200, n_test=40)
    out = tmp_path / "report"
    args = ["demo", "--data", str(folder), "--out", str(out), "--epochs", "1", "--no-latency", "--quiet",
            "--threads", "1", "--test-subset", "30"]
    assert main(args) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["n_eval"] == 30 and summary["report"]["shots"] == 5 and summary["report"]["n_samples"] == 50
    config = summary["report"]["config"]
    assert config["method"]["params"]["keep"] == 0.5 and config["solver"]["name"] == "closed-form"
    assert "written" not in capsys.readouterr().err
    # An existing report is not replaced without --force, and nothing runs first.
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert torch.get_num_threads() == 1  # the demo restores the caller's thread setting


def test_default_threads_is_within_bounds():
    assert 1 <= default_threads() <= max(1, torch.get_num_threads())


def test_default_report_folder_is_replaced_but_nothing_else(tmp_path, monkeypatch, capsys):
    folder = write_fashion_idx(tmp_path / "fmnist", n_train=200, n_test=40)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["demo", "--data", str(folder), "--epochs", "1", "--no-latency", "--quiet", "--threads", "1"]
    assert main(args) == 0 and (work / "crossdistill-demo" / "report.json").is_file()
    assert main(args) == 0  # `make demo` twice: the old demo report is replaced
    (work / "crossdistill-demo" / "report.json").write_text("{}")  # not a demo report any more
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_cache_key_changes_with_the_architecture(monkeypatch):
    import crossdistill.models as models

    fp = "0" * 64
    before = TINY.key(fp)
    real = models.create_model
    monkeypatch.setattr(models, "create_model", lambda name, **kw: real(name, channels=[8, 16, 32], **kw))
    assert TINY.key(fp) != before


def test_the_teacher_trains_on_one_thread_whatever_the_run_uses(tmp_path, monkeypatch):
    # Summed over more threads, training rounds differently: the teacher, and every figure after
    # it, would follow the machine's load at the first run.
    import crossdistill.demo.cache as cache_module

    seen = []
    real = cache_module.train_teacher

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "train_teacher", spy)
    summary = run_demo(DemoOptions(out=tmp_path / "d", recipe=TINY, latency=False, show_progress=False, threads=2),
                       train=fashion_like(200, 0), test=fashion_like(50, 1))
    assert seen == [1]
    assert summary["teacher"]["threads"] == 1 and summary["timings"]["threads"] == 2
    assert summary["teacher"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_data_that_is_not_fashion_mnist_is_refused_before_the_teacher_trains(tmp_path, capsys, monkeypatch):
    """CIFAR-10 given to the demo trained the Fashion-MNIST teacher, then failed in a traceback."""
    import numpy as np

    from crossdistill.data import ImageArrays
    from crossdistill.errors import CrossDistillError

    assert main(["demo", "--data", "cifar10", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "the demo takes 'fashion-mnist' or a folder of Fashion-MNIST IDX files" in capsys.readouterr().err
    assert main(["demo", "--train-subset", "0", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "--train-subset must be >= 1, got 0" in capsys.readouterr().err
    colour = ImageArrays(x=np.zeros((20, 32, 32, 3), np.uint8), y=np.arange(20) % 10, num_classes=10)
    import crossdistill.demo.run as demo_run

    monkeypatch.setattr(demo_run, "get_teacher", lambda *a, **k: pytest.fail("the teacher trained"))
    with pytest.raises(CrossDistillError, match=r"28x28 gray images, 10 classes\), these are \(32, 32, 3\)"):
        run_demo(DemoOptions(out=tmp_path / "c", show_progress=False), train=colour, test=colour, log=None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
