"""Progress in a log: a redirected stderr gets whole lines now and then, never carriage-return
redraws; a terminal keeps its live bar."""
from __future__ import annotations

import io
import time

import pytest

import crossdistill.progress as progress
from crossdistill.cli.main import main
from crossdistill.progress import LogLines, progress_bar
from sweep_helpers import write_npz_pair


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_bar(monkeypatch, stream, steps: int, pause: float = 0.0) -> str:
    monkeypatch.setattr("sys.stderr", stream)
    with progress_bar("solving", steps, "layer", delay=0) as bar:
        for _ in range(steps):
            time.sleep(pause)
            bar.update(1)
    return stream.getvalue()


def test_a_log_gets_whole_lines_and_the_final_count(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.05)
    text = _run_bar(monkeypatch, io.StringIO(), steps=6, pause=0.03)
    assert "\r" not in text
    lines = text.splitlines()
    assert text.endswith("\n") and all(line.startswith("solving:") for line in lines)
    assert "6/6" in lines[-1]  # the bar's last state stays in the log
    assert 2 <= len(lines) <= 6  # some updates, not one line per update


def test_a_log_is_not_flooded_by_fast_updates(monkeypatch):
    text = _run_bar(monkeypatch, io.StringIO(), steps=2000)  # LOG_INTERVAL as shipped
    assert len(text.splitlines()) <= 2 and "2000/2000" in text


def test_a_terminal_keeps_its_live_bar(monkeypatch):
    text = _run_bar(monkeypatch, _Terminal(), steps=3)
    assert "\r" in text and "\n" not in text.rstrip("\n")  # redrawn in place, then cleared


def test_quick_phases_write_nothing_to_a_log(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with progress_bar("evaluating", 10) as bar:  # the default delay: longer than this phase
        bar.update(10)
    assert progress.sys.stderr.getvalue() == ""


def test_log_lines_drop_blanking_and_keep_stream_attributes():
    out = io.StringIO()
    log = LogLines(out)
    assert log.write("\rfine-tune:  10%|#    | 1/10   ") == len("\rfine-tune:  10%|#    | 1/10   ")
    log.write("\r" + " " * 40)  # a bar clearing itself
    log.write("\r")
    assert out.getvalue() == "fine-tune:  10%|#    | 1/10\n"
    assert log.isatty() is False and log.closed is False  # the rest is the stream's


@pytest.fixture
def data(tmp_path):
    return write_npz_pair(tmp_path / "data", n_train=40, n_test=20)


def test_compress_writes_a_readable_log(data, tmp_path, capsys, monkeypatch):
    # capsys's stderr is not a terminal, as a batch job's log file is not.
    monkeypatch.setattr(progress, "PROGRESS_DELAY", 0)
    train, test = data
    assert main(["compress", "--model", "fashion_cnn", "--data", str(train), "--eval-data", str(test),
                 "--shots", "2", "--out", str(tmp_path / "r"), "--finetune-epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("fine-tune:") and "100%" in line for line in err.splitlines())
    assert any("layer" in line and "100%" in line for line in err.splitlines())


def test_a_notebook_keeps_its_live_bar(monkeypatch):
    # ipykernel's stream says it is no terminal, but a notebook draws carriage returns in place.
    class OutStream(io.StringIO):
        def isatty(self) -> bool:
            return False

    OutStream.__module__ = "ipykernel.iostream"
    text = _run_bar(monkeypatch, OutStream(), steps=3)
    assert "\r" in text


def test_a_log_bar_is_not_redrawn_by_the_monitor_thread(monkeypatch):
    # tqdm's monitor redraws a bar idle for maxinterval (10 s) < LOG_INTERVAL: a line twice.
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with progress_bar("phase", 10, delay=0) as bar:
        assert bar.maxinterval == float("inf") and bar.mininterval == progress.LOG_INTERVAL
