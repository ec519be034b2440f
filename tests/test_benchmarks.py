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
