"""Statistics over several processes (crossdistill.distributed): `torchrun` with the gloo backend
on this CPU, two local processes. The student equals the single-process one (same kept
channels, the float64 layer losses to 1e-9, the float32 weights to within their rounding), only
rank 0 writes, and a rank that fails stops every rank with its message, nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import crossdistill
from crossdistill import distributed
from crossdistill.cli.main import main
from sweep_helpers import write_npz_pair
from test_user_models import FACTORY

WORKER = Path(__file__).with_name("distributed_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(FACTORY)
    train, test = write_npz_pair(tmp_path / "data", n_train=100, n_test=40)
    return f"{path}:make", train, test


def torchrun(tmp_path: Path, *args: str, n: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parent}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           str(WORKER), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def compress_args(factory: str, train: Path, test: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", "--model", factory, "--data", str(train), "--eval-data", str(test), "--shots", "5",
            "--quiet", "--threads", "1", "--out", str(out), *extra]


def test_one_process_functions_are_the_identity():
    x = torch.arange(5.0)
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.shard(x, align=16) is x and distributed.sum_(x) is x
    assert distributed.on_main(lambda: 7) == 7
    distributed.agree(None)
    with pytest.raises(ValueError, match="boom"):
        distributed.agree(ValueError("boom"))


def test_each_process_takes_its_own_gpu(monkeypatch):
    cuda = torch.device("cuda")
    assert distributed.rank_device(cuda) == cuda  # one process: as asked
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.rank_device(cuda) == torch.device("cuda", 1)  # 3 processes on 2 GPUs: wraps
    assert distributed.rank_device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # pinned
    assert distributed.rank_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("extra", [(), ("--budget", "global", "--method", "channels", "--keep", "0.5")])
def test_two_processes_give_the_single_process_student(setup, tmp_path, extra):
    factory, train, test = setup
    assert main(compress_args(factory, train, test, tmp_path / "one", *extra)) == 0
    done = torchrun(tmp_path, "cli", *compress_args(factory, train, test, tmp_path / "two", *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "statistics over 2 processes" in done.stdout
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert [l.get("kept") for l in one["layers"]] == [l.get("kept") for l in two["layers"]]
    for a, b in zip(one["layers"], two["layers"]):
        assert b["loss_after"] == pytest.approx(a["loss_after"], rel=1e-9, abs=1e-12)
    sa, sb = crossdistill.load(tmp_path / "one").state_dict(), crossdistill.load(tmp_path / "two").state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].double(), sb[k].double(), rtol=1e-6, atol=1e-7), k
    assert one["student"]["top1"] == two["student"]["top1"]


@pytest.mark.parametrize("bad", [0, 1])
def test_a_failing_rank_stops_every_rank_and_nothing_is_written(setup, tmp_path, bad):
    factory, train, test = setup
    out = tmp_path / "never"
    done = torchrun(tmp_path, "fail", str(bad), *compress_args(factory, train, test, out))
    assert done.returncode != 0
    assert "RuntimeError: injected failure while capturing" in done.stderr  # the failing rank's own traceback
    # The other rank names the one that failed and exits through that error, not a timeout.
    assert (f"error (rank {1 - bad}): the run failed on another process (rank {bad}: RuntimeError: "
            "injected failure while capturing)") in done.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")], list(tmp_path.iterdir())


def test_a_rank_failing_before_the_others_meet_it_stops_every_rank_at_once(setup, tmp_path):
    """Rank 1 failed loading its weights while rank 0 compared the teachers: rank 0 read rank 1's
    failure as a different teacher, the two ranks then waited at different meeting points, and the
    run hung for the group's 30-minute timeout without a word."""
    factory, train, test = setup
    out = tmp_path / "never"
    done = torchrun(tmp_path, "missing", "1", *compress_args(factory, train, test, out), timeout=180)
    assert done.returncode != 0
    assert "error (rank 1): weights file not found: /nonexistent/teacher.pt" in done.stderr, done.stderr[-2000:]
    assert "error (rank 0): the run failed on another process (rank 1: CrossDistillError" in done.stderr
    assert not out.exists()


def test_python_api_inside_a_process_group(setup, tmp_path):
    factory, _, _ = setup
    done = torchrun(tmp_path, "api", factory, str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    from crossdistill.models.user import build_user_model

    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(48, 1, 28, 28, generator=gen), torch.arange(48) % 10
    single, _ = crossdistill.compress(build_user_model(factory), images, labels=labels, shots=4, method="channels",
                                      keep=0.5, show_progress=False)
    for k, v in single.state_dict().items():
        assert torch.equal(r0[k], r1[k]), k  # every rank holds the same student
        assert torch.allclose(v.double(), r0[k].double(), rtol=1e-6, atol=1e-7), k


def test_ranks_with_different_teachers_are_refused(setup, tmp_path):
    # A registered model without --weights is initialised at random, differently in each process.
    _, train, test = setup
    done = torchrun(tmp_path, "cli", "compress", "--model", "fashion_cnn", "--data", str(train), "--shots", "2",
                    "--quiet", "--out", str(tmp_path / "never"))
    assert done.returncode != 0
    assert "the processes hold different teachers" in done.stderr
    assert not (tmp_path / "never").exists()
