"""--out is claimed before the work, exclusively, by every command that writes one: two runs on
one --out give one result and one clear error, an unwritable --out fails before any compute
and names the user's path, and a run killed with SIGKILL leaves nothing that later runs keep.

The first tests run real `python -m crossdistill.cli.main` processes on tiny synthetic data."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossdistill.cli.main import main
from crossdistill.errors import CrossDistillError
from crossdistill.outputs import atomic_output_dir, clean_stale, output_lock
from sweep_helpers import write_npz_pair

BUSY = "is being written by another crossdistill run"
EXISTS = "already exists; pass --force"


def _env(tmp_path: Path) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "CROSSDISTILL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


# `crossdistill.cli.main` with its write phase slowed down: two runs then overlap in it for sure,
# as two runs with big outputs (ResNet-56: 14-23 s of work, a long write) do by themselves.
SLOW_WRITE = """
import sys, time
import crossdistill.pipeline as pipeline
from crossdistill.cli.main import main
real = pipeline.write_run
def slow(*args, **kwargs):
    time.sleep(DELAY)
    return real(*args, **kwargs)
pipeline.write_run = slow
sys.exit(main(sys.argv[1:]))
"""


def _start(argv: list[str], tmp_path: Path, slow_write: float = 0.0, default_signals: bool = False
           ) -> subprocess.Popen:
    cmd = ([sys.executable, "-c", SLOW_WRITE.replace("DELAY", repr(slow_write))] if slow_write
           else [sys.executable, "-m", "crossdistill.cli.main"])
    # A child inherits ignored signals (pytest under nohup ignores SIGHUP), which the command
    # rightly leaves ignored; default_signals gives it a terminal's defaults.
    reset = (lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGHUP, signal.SIGTERM)]) \
        if default_signals else None
    return subprocess.Popen([*cmd, *map(str, argv)], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=reset)


def _compress(tmp_path: Path, out: Path, n_test: int = 1000) -> list[str]:
    train, test = write_npz_pair(tmp_path / "data", n_train=200, n_test=n_test)
    return ["compress", "--model", "fashion_cnn", "--data", train, "--eval-data", test, "--shots", "2",
            "--quiet", "--out", out]


def _wait_for_claim(proc: subprocess.Popen, out: Path) -> None:
    """Until the run's temporary folder beside `out` exists (it still running then)."""
    deadline = time.monotonic() + 300
    while not list(out.parent.glob(f".{out.name}.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its temporary folder appeared"


def _hidden(folder: Path) -> list[str]:
    # A folder the run made for its output is removed with it when no output came.
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


@pytest.mark.slow
def test_two_runs_started_together_on_one_out_give_one_result_and_one_clear_error(tmp_path):
    out = tmp_path / "runs" / "x"
    argv = _compress(tmp_path, out)
    procs = [_start(argv, tmp_path, slow_write=3.0) for _ in range(2)]
    done = [(*p.communicate(timeout=600), p.returncode) for p in procs]
    codes = sorted(rc for _, _, rc in done)
    assert codes == [0, 2], done  # the old code: both 0, one result silently replaced by the other
    (winner,) = [d for d in done if d[2] == 0]
    (loser,) = [d for d in done if d[2] == 2]
    assert f"written to {out}" in winner[0] and "written to" not in loser[0]
    err = loser[1].strip()
    assert err.startswith("crossdistill compress: error: ") and len(err.splitlines()) == 1, err
    assert BUSY in err or EXISTS in err, err
    assert (out / "report.json").is_file() and (out / "student.safetensors").is_file()
    assert _hidden(out.parent) == []  # no lock, temporary or moved-aside folder left behind


@pytest.mark.slow
def test_a_run_killed_during_its_work_is_cleaned_up_by_the_next(tmp_path):
    out = tmp_path / "runs" / "x"
    argv = _compress(tmp_path, out)
    proc = _start(argv, tmp_path)
    # The temporary folder exists from the claim on (the old code made it only after the work).
    _wait_for_claim(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.parent.glob(".x.tmp-*")) and not out.exists()
    again = subprocess.run([sys.executable, "-m", "crossdistill.cli.main", *map(str, argv)], cwd=tmp_path,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr  # the dead run's claim does not block
    assert _hidden(out.parent) == []  # and its temporary folder is gone
    assert (out / "report.json").is_file()


def test_unwritable_out_fails_before_any_work_and_names_the_users_path(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    # The data does not exist: a check made before the work reports --out, not the data.
    argv = ["compress", "--model", "fashion_cnn", "--data", "missing.npz", "--out", "afile/sub"]
    res = subprocess.run([sys.executable, "-m", "crossdistill.cli.main", *argv], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip() == "crossdistill compress: error: cannot write afile/sub: afile is a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_fails_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["compress", "--model", "fashion_cnn", "--data", str(tmp_path / "missing.npz"),
                     "--out", str(ro / "sub")]) == 2
    finally:
        ro.chmod(0o755)


def test_out_is_refused_while_another_run_holds_it(tmp_path, capsys):
    """Every command that writes --out: held by another run, it fails before its work."""
    from crossdistill.config import CompressConfig
    from crossdistill.models import create_model, save_model
    from crossdistill.sweep import SweepDB, config_hash
    from crossdistill.sweep.runner import row_for

    train, test = write_npz_pair(tmp_path / "data")
    save_model(create_model("fashion_cnn"), tmp_path / "m.safetensors")
    db = tmp_path / "s.sqlite"
    with SweepDB(db) as handle:
        cfg = CompressConfig(model="fashion_cnn", data=str(train), eval_data=str(test)).validate()
        handle.record_run({**row_for(cfg, config_hash(cfg), "hand"), "status": "ok", "error": None,
                           "student_top1": 50.0, "student_params": 5, "student_flops": 5, "compress_seconds": 1.0,
                           "run_seconds": 1.0, "teacher_top1": 60.0, "teacher_params": 9, "teacher_flops": 9,
                           "n_eval": 20})
    out = tmp_path / "held"
    common = ["--model", "fashion_cnn", "--data", str(train), "--shots", "2", "--quiet", "--out", str(out)]
    commands = {
        "compress": ["compress", *common],
        "baseline": ["baseline", "l1", *common],
        "report": ["report", str(db), "--out", str(out)],
        "export": ["export", str(tmp_path / "m.safetensors"), "--format", "torchscript", "--out", str(out)],
        "demo": ["demo", "--data", str(tmp_path / "nowhere"), "--quiet", "--out", str(out)],
    }
    with output_lock(out):
        for name, argv in commands.items():
            assert main(argv) == 2, name
            err = capsys.readouterr().err
            assert f"{out} {BUSY} (pid {os.getpid()})" in err, (name, err)
    assert not out.exists() and _hidden(tmp_path) == []
    with output_lock(out):  # free again: the claim went with its holder
        pass


def test_force_replaces_only_a_finished_result(tmp_path):
    out = tmp_path / "r"
    with atomic_output_dir(out) as tmp:
        (tmp / "report.json").write_text("first")
    with pytest.raises(CrossDistillError, match=EXISTS):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "b").write_text("second")
        with pytest.raises(CrossDistillError, match=BUSY):  # not even --force takes a claimed --out
            with atomic_output_dir(out, force=True):
                pass
    assert sorted(p.name for p in out.iterdir()) == ["b"] and _hidden(tmp_path) == []


def test_stale_folders_of_dead_processes_are_cleaned_and_an_interrupted_replace_undone(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    target = tmp_path / "x"
    (tmp_path / f".x.tmp-{pid}-abc").mkdir()
    (tmp_path / f".x.old-{pid}").mkdir()  # killed between moving x aside and moving the new x in
    (tmp_path / f".x.old-{pid}" / "report.json").write_text("{}")
    (tmp_path / f".x.tmp-{os.getppid()}-live").mkdir()  # a live process's: kept
    (tmp_path / ".y.tmp-1-other").mkdir()  # another output's: not ours to judge
    clean_stale(target)
    assert (target / "report.json").is_file()  # the previous result is back
    assert _hidden(tmp_path) == [".x.tmp-%d-live" % os.getppid(), ".y.tmp-1-other"]


def test_a_failed_write_names_the_users_out_not_the_temporary_folder(tmp_path, monkeypatch, capsys):
    import crossdistill.pipeline as pipeline

    def full_disk(folder, result, report):
        raise OSError(28, "No space left on device", str(folder / "report.json"))

    monkeypatch.setattr(pipeline, "write_run", full_disk)
    train, _ = write_npz_pair(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "--model", "fashion_cnn", "--weights", _weights(tmp_path), "--data", str(train),
                 "--shots", "2", "--quiet", "--out", "runs/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("crossdistill compress: error: cannot write runs/x: No space left on device (writing report.json); "
                   "nothing was written")
    assert not (tmp_path / "runs").exists()  # made for the output that never came, and removed


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_run_stopped_by_sigterm_leaves_nothing_behind(tmp_path, sig, code):
    # SIGTERM (a scheduler's stop) and SIGHUP (a closed terminal) used to leave the claim
    # (.x.lock) and the temporary folder for the next run to clean; they now leave like Ctrl-C.
    out = tmp_path / "runs" / "x"
    argv = _compress(tmp_path, out)
    # The write phase held open: the signal lands in the run, not after it (a quick run could
    # end between its claim and the signal).
    proc = _start(argv, tmp_path, slow_write=60, default_signals=True)
    _wait_for_claim(proc, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and not out.exists()
    assert _hidden(out.parent) == []
    # A scheduler's log says why the job ended (it used to end without a word).
    assert f"crossdistill compress: stopped by {sig.name}" in err


def test_force_replaces_only_result_folders(tmp_path, monkeypatch):
    """`--out . --force` (or an empty $OUT) removed the working folder with everything in it;
    --force now replaces an empty folder or a result (it holds report.json), nothing else."""
    def write(out: Path, force: bool) -> None:
        with atomic_output_dir(out, force) as tmp:
            (tmp / "report.json").write_text("{}")

    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "notes.txt").write_text("precious")
    monkeypatch.chdir(work)
    for out in (Path("."), Path("data/..")):
        with pytest.raises(CrossDistillError, match="is the current folder: --force would remove it"):
            write(out, True)
    with pytest.raises(CrossDistillError, match="is a folder above the current one"):
        write(Path(".."), True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CrossDistillError, match=r"is not a crossdistill result \(it holds data, notes.txt and no report.json\)"):
        write(work, True)
    monkeypatch.chdir(work)
    assert (work / "notes.txt").read_text() == "precious" and (work / "data").is_dir()
    (work / "empty").mkdir()
    write(Path("empty"), True)  # an empty folder may be filled
    write(Path("empty"), True)  # and a result replaced
    assert sorted(p.name for p in (work / "empty").iterdir()) == ["report.json"]


def test_a_writers_own_message_names_out_not_the_temporary_folder(tmp_path):
    """A full disk under save said 'cannot write .../.out.tmp-21535-r_297w8q/student.safetensors'."""
    out = tmp_path / "runs" / "x"
    with pytest.raises(CrossDistillError) as caught:
        with atomic_output_dir(out) as tmp:
            raise CrossDistillError(f"cannot write {tmp / 'student.safetensors'}: File too large")
    assert str(caught.value) == f"cannot write {out / 'student.safetensors'}: File too large; nothing was written"
    assert not out.exists()


def test_a_stop_whose_exception_was_lost_still_commits_nothing(tmp_path, monkeypatch):
    """A signal that reached another thread is handled at the main thread's next check, which can
    be inside a C extension that drops the SystemExit: the run then wrote its result and exited 0
    (one time in four in the signal test above). The stop is remembered; the commit refuses."""
    from crossdistill import stop_request

    monkeypatch.setattr(stop_request, "_requested", [])
    out = tmp_path / "runs" / "x"
    with pytest.raises(SystemExit) as stopped:
        with atomic_output_dir(out, False) as tmp:
            (tmp / "report.json").write_text("{}")
            stop_request.request(143)  # the handler ran; its exception never arrived
    assert stopped.value.code == 143 and not out.exists() and _hidden(out.parent) == []


def test_a_full_disk_met_by_a_write_that_names_no_file_is_an_error_line(tmp_path, monkeypatch, capsys):
    # json's write or a plot's PNG chunk raise ENOSPC without a file name: that was a traceback.
    import crossdistill.pipeline as pipeline

    def full_disk(folder, result, report):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_run", full_disk)
    train, _ = write_npz_pair(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "--model", "fashion_cnn", "--weights", _weights(tmp_path), "--data", str(train),
                 "--shots", "2", "--quiet", "--out", "runs/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("crossdistill compress: error: a write failed while making runs/x: No space left on device; "
                   "nothing was written there")
    assert not (tmp_path / "runs").exists()


def test_a_symlink_and_its_target_are_one_claim(tmp_path):
    # Two sweeps, one naming the database through a link, both ran and the second's results were dropped.
    real = tmp_path / "dbreal" / "c.sqlite"
    real.parent.mkdir()
    real.touch()
    link = tmp_path / "c-link.sqlite"
    link.symlink_to(real)
    with output_lock(real, force=True, option="--db"):
        with pytest.raises(CrossDistillError, match=BUSY):
            with output_lock(link, force=True, option="--db"):
                pass


def test_a_dangling_symlink_out_is_claimed_beside_the_link(tmp_path):
    # Its target's folder does not exist: the lock cannot go there, and replacing the link (--force) must still work.
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "missing" / "x")
    with output_lock(link, force=True) as target:
        assert target == link
        assert (tmp_path / ".out.lock").exists()


def _weights(folder) -> str:
    """A state dict for the registered fashion_cnn (one without weights is warned about)."""
    import torch

    from crossdistill.models import create_model

    path = folder / "fashion_cnn.pt"
    torch.save(create_model("fashion_cnn").state_dict(), path)
    return str(path)
