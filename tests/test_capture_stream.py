"""capture='stream' (the teacher walked front to back, one layer's inputs held at a time) and
capture='disk' (the same, the cached fronts in files, every input read batch by batch) give the
student of capture='all' (every layer's inputs from one pass), bit for bit."""
from __future__ import annotations

import pytest
import torch

from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.models import create_model
from crossdistill.pipeline import compress
from test_graph_channels import build
from test_graph_pruning import fewshot_for


def students(teacher, few, model: str = "user-x", spill=None, **settings):
    out = {}
    for capture in ("all", "stream", "disk"):
        cfg = CompressConfig(model=model, n_samples=len(few.labels), damping=0.01, capture=capture,
                             capture_dir=(str(spill) if spill is not None else None), batch_size=3, **settings)
        out[capture] = compress(teacher, few, cfg, show_progress=False).student.state_dict()
    return out


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("key,settings", [
    ("densenet", {"keep": 0.5}),                       # concatenations: groups read by many layers
    ("resnet", {"keep": 0.5, "budget": "global"}),     # a global budget's costs streamed too
    ("mobilenet", {"method": "sparsity", "sparsity": 0.5}),
])
def test_streamed_capture_gives_the_same_student(key, settings, tmp_path):
    teacher, example = build(key)
    few = fewshot_for(example)
    got = students(teacher, few, spill=tmp_path, **settings)
    same(got["all"], got["stream"])
    same(got["all"], got["disk"])
    assert list(tmp_path.iterdir()) == []  # the disk capture's files are gone


def test_streamed_capture_of_a_model_with_forward_units():
    torch.manual_seed(0)
    teacher = create_model("resnet20").eval()
    few = fewshot_for(torch.zeros(1, 3, 32, 32), n=8)
    got = students(teacher, few, model="resnet20", keep=0.5)
    same(got["all"], got["stream"])
    same(got["all"], got["disk"])


def test_disk_capture_keeps_fronts_in_files_and_removes_them_on_failure(tmp_path, monkeypatch):
    # The cached fronts go to disk (a file per batch, several batches here), and a run that fails
    # halfway leaves nothing behind.
    from crossdistill import capture as capture_module
    from crossdistill import engine

    torch.manual_seed(0)
    teacher = create_model("resnet20").eval()
    few = fewshot_for(torch.zeros(1, 3, 32, 32), n=8)
    written = []
    real_save = torch.save

    def save(obj, path, *a, **k):
        written.append(str(path))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(capture_module.torch, "save", save)
    calls = {"n": 0}
    real_solve = engine.solve_layer

    def failing_solve(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("injected")
        return real_solve(*a, **k)

    monkeypatch.setattr(engine, "solve_layer", failing_solve)
    cfg = CompressConfig(model="resnet20", n_samples=8, damping=0.01, keep=0.5, capture="disk",
                         capture_dir=str(tmp_path), batch_size=3)
    with pytest.raises(RuntimeError, match="injected"):
        compress(teacher, few, cfg, show_progress=False)
    assert len(written) >= 2 * 3 and all(p.startswith(str(tmp_path)) for p in written)
    assert list(tmp_path.iterdir()) == []


def test_capture_dir_does_not_change_a_runs_identity():
    a = CompressConfig(model="resnet20", capture="disk").to_dict()
    b = CompressConfig(model="resnet20", capture="disk", capture_dir="/elsewhere").to_dict()
    from crossdistill.config.sections import run_identity

    assert run_identity(a) == run_identity(b)


def test_capture_setting_is_checked():
    with pytest.raises(CrossDistillError, match="capture"):
        CompressConfig(model="resnet20", capture="later")


def test_a_capture_dir_that_is_not_a_folder_is_refused_before_any_work(tmp_path):
    not_there = tmp_path / "missing"
    with pytest.raises(CrossDistillError, match="capture_dir .*missing.*not an existing folder"):
        CompressConfig(model="resnet20", capture="disk", capture_dir=str(not_there)).validate()
    assert not not_there.exists()


def test_one_forward_per_batch_gives_each_readers_inputs_and_problem():
    # A residual stage's readers of one channel group, captured together (inputs_per_batch) and
    # solved into problems together (teacher_side_problems): the same as one reader at a time.
    from crossdistill.capture import get_module, inputs_per_batch, layer_inputs
    from crossdistill.engine import teacher_side_problem, teacher_side_problems

    torch.manual_seed(0)
    teacher = create_model("resnet20").eval()
    batches = [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    names = ["layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1"]
    calls = []
    handle = teacher.layer3.register_forward_pre_hook(lambda m, a: calls.append(1))
    together = list(inputs_per_batch(teacher, names, batches))
    handle.remove()
    assert calls == []  # the forward stopped once every reader was reached
    for n in names:
        alone = list(layer_inputs(teacher, n, batches))
        assert all(torch.equal(a, t[n]) for a, t in zip(alone, together))
    cols = {n: [0, 1, 2, 9, 10, 11, 40] for n in names}
    problems = teacher_side_problems(teacher, cols, batches, damping=0.01)
    for n in names:
        one = teacher_side_problem(get_module(teacher, n), layer_inputs(teacher, n, batches), 0.01, cols[n])
        assert torch.equal(one.H, problems[n].H) and torch.equal(one.B, problems[n].B) and one.c == problems[n].c
    # A layer the forward never calls is named, not waited for.
    net = torch.nn.ModuleDict({"used": torch.nn.Conv2d(3, 4, 3), "spare": torch.nn.Conv2d(3, 4, 3)})
    net.forward = lambda x: net["used"](x)
    with pytest.raises(CrossDistillError, match=r"\['spare'\] were not reached"):
        list(inputs_per_batch(net, ["used", "spare"], [torch.randn(1, 3, 8, 8)]))


def test_disk_capture_cleans_up_after_killed_runs_and_says_when_the_disk_is_full(tmp_path, monkeypatch):
    """A run killed outright left its capture folder (251 MiB) that no later run removed; a full
    capture disk surfaced as torch's 'unexpected pos 704 vs 598' traceback."""
    import os
    import subprocess
    import sys

    import crossdistill.capture as capture
    from crossdistill.engine import CAPTURE_PREFIX, remove_dead_captures
    from crossdistill.errors import CrossDistillError

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmp_path / f"{CAPTURE_PREFIX}{dead}-abc"
    live = tmp_path / f"{CAPTURE_PREFIX}{os.getppid()}-abc"
    for d in (stale, live):
        d.mkdir()
        (d / "front-0-0.pt").write_bytes(b"x")
    remove_dead_captures(str(tmp_path))
    assert not stale.exists() and live.exists()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(capture.torch, "save", full)
    with pytest.raises(CrossDistillError, match=r"cannot write the capture's temporary files in .*is that disk full"):
        capture._save_front(torch.zeros(2), str(tmp_path / "f.pt"))
