"""The benchmark scripts run (at toy sizes) and print their tables: figures, not pass/fail."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_solver_speed_prints_one_row_per_solver_with_a_figure_per_width(capsys):
    assert load("solver_speed").main(["--widths", "144", "288", "--no-resnet"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "solver" not in line]
    assert len(lines) == 5
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        assert len(cells) == 2 and all(float(c) >= 0 for c in cells)


def test_capture_memory_prints_a_row_per_mode_with_its_peak(capsys):
    args = ["--model", "resnet20", "--size", "32", "--images", "8", "--captures", "all", "disk", "--batch-size", "4"]
    assert load("capture_memory").main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 8 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["all", "disk"]
    for r in rows:
        seconds, cpu, peak = (float(c.split()[0]) for c in r.strip("|").split("|")[2:5])
        assert seconds > 0 and cpu > 0 and peak > 100  # a Python with torch loaded is over 100 MiB


def test_scale_network_prints_stages_that_add_up(capsys):
    args = ["--model", "resnet20", "--images", "8", "--size", "32", "--processes", "1", "--capture", "disk",
            "--batch-size", "4"]
    assert load("scale_network").main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cpu | 1 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2] == "disk" and cells[-1] == "–"  # no GPU memory on the CPU
    total, capture, solves, other, peak = (float(c) for c in cells[3:8])
    assert total > 0 and capture >= 0 and solves > 0 and peak > 100
    assert abs(capture + solves + other - total) < 0.2  # rounding of the printed figures
