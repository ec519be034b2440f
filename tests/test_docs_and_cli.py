"""README, help texts and packaging say what the code does: every command they name exists,
`evaluate` reads run folders like `load` and `export`, a missing optional package is named
with its install command, and the small things of the install and of data checks."""
from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from crossdistill.cli.main import COMMANDS, build_parser, main
from crossdistill.errors import CrossDistillError
from sweep_helpers import write_npz_pair

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def command_names() -> set[str]:
    return {m.rsplit(".", 1)[1].removesuffix("_cmd") for m in COMMANDS}


def _help_texts() -> dict[str, str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: p.format_help() for name, p in sub.choices.items()}


def test_every_command_that_readme_and_help_name_exists():
    named = set(re.findall(r"`crossdistill ([a-z][a-z-]*)", README))
    named |= set(re.findall(r"^crossdistill ([a-z][a-z-]*)", README, re.M))
    for text in _help_texts().values():
        named |= set(re.findall(r"`crossdistill ([a-z][a-z-]*)", text))
    assert "models" in named  # compress --help points there
    assert named <= command_names(), named - command_names()


def test_models_lists_the_registered_models(capsys):
    from crossdistill.models import list_models

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(list_models())
    cnn = rows["fashion_cnn"]
    assert cnn["params"] == 29_178 and cnn["flops"] == 3_849_984 and cnn["input_size"] == [1, 28, 28]
    assert rows["resnet56"]["params"] == 853_018
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "29,178" in table and "3×224×224" in table and table.splitlines()[0].startswith("model")


def test_evaluate_reads_a_run_folder(tmp_path, capsys):
    train, test = write_npz_pair(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["compress", "--model", "fashion_cnn", "--data", str(train), "--shots", "2", "--quiet",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(run), "--eval-data", str(test), "--no-latency", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "fashion_cnn" and res["params"] == 16_386
    assert main(["evaluate", "--weights", str(tmp_path / "data"), "--eval-data", str(test)]) == 2
    assert "directory holds no saved model" in capsys.readouterr().err


def test_readme_data_section_documents_the_cache_variable():
    data = _section("Data and teachers")
    assert "CROSSDISTILL_CACHE" in data and "~/.cache/crossdistill" in data
    from crossdistill.paths import CACHE_ENV

    assert CACHE_ENV == "CROSSDISTILL_CACHE"


def test_export_without_the_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    from crossdistill.models import create_model, save_model

    save_model(create_model("fashion_cnn"), tmp_path / "m.safetensors")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if not installed
    assert main(["export", str(tmp_path / "m.safetensors"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pip install 'crossdistill[export]'") and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("*.onnx")) and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_readme_and_make_demo_say_how_to_run_the_installed_command():
    makefile = (ROOT / "Makefile").read_text()
    venv = re.search(r"^VENV := (\S+)", makefile, re.M).group(1)
    assert f"source {venv}/bin/activate" in _section("Command line")
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "source $(VENV)/bin/activate" in demo  # printed after the demo


def test_license_is_an_spdx_string_for_a_setuptools_that_reads_it():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    (req,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.search(r">=\s*(\d+)", req).group(1)) >= 77  # the first that accepts the string


def test_makefile_shows_pip_progress():
    pip_lines = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if "pip install" in ln]
    assert pip_lines and not [ln for ln in pip_lines if re.search(r"\s-q\b|--quiet", ln)]


def test_the_demo_folder_is_ignored_by_git():
    from crossdistill.demo import DEFAULT_OUT

    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert f"/{DEFAULT_OUT}/" in ignored or f"{DEFAULT_OUT}/" in ignored


def test_data_of_one_class_warns_and_the_report_counts_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", x=rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8), y=np.zeros(20, int))
    out = tmp_path / "r"
    import torch

    from crossdistill.models import create_model

    torch.save(create_model("fashion_cnn").state_dict(), tmp_path / "w.pt")
    assert main(["compress", "--model", "fashion_cnn", "--weights", str(tmp_path / "w.pt"), "--data",
                 str(tmp_path / "one.npz"), "--shots", "2", "--quiet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "crossdistill: warning: " in err and "cover 1 of the model's 10 classes" in err
    assert len(err.strip().splitlines()) == 1  # one line, not Python's warning format
    report = json.loads((out / "report.json").read_text())
    assert report["fewshot_class_counts"] == [2] + [0] * 9


def test_a_negative_label_is_called_negative(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "neg.npz", x=rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8), y=np.arange(20) % 10 - 1)
    assert main(["compress", "--model", "fashion_cnn", "--data", str(tmp_path / "neg.npz"), "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "label -1 is negative" in err and "outside [0, 9)" not in err


def test_a_zero_sample_count_names_the_option(tmp_path, capsys):
    from crossdistill.data import sample_few_shot

    train, _ = write_npz_pair(tmp_path / "data")
    assert main(["compress", "--model", "fashion_cnn", "--data", str(train), "--n-samples", "0",
                 "--out", str(tmp_path / "r")]) == 2
    assert "error: n_samples must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(CrossDistillError, match=r"n_samples \(--n-samples\) must be >= 1, got 0"):
        sample_few_shot(np.arange(20) % 10, n=0)


def test_every_make_target_readme_names_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README)) | set(re.findall(r"^make ([a-z][a-z-]*)", README, re.M))
    assert {"demo", "test", "demo-figures"} <= named
    assert named <= targets, named - targets


def test_a_reader_that_leaves_early_is_not_an_error(tmp_path):
    """`crossdistill models | head -1`: the pipe closes before the table is written; no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import sys; from crossdistill.cli.main import main; "
                             "sys.exit(main(['models']))"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_a_misspelled_option_or_key_names_the_nearest_one(capsys):
    from crossdistill.config import CompressConfig
    from crossdistill.errors import CrossDistillError

    # The top-level usage and no suggestion came back for a subcommand's unknown option.
    with pytest.raises(SystemExit):
        main(["compress", "--model", "resnet20", "--kep", "0.5", "--out", "x"])
    err = capsys.readouterr().err
    assert "crossdistill compress: error: unrecognized arguments: --kep 0.5 (did you mean --keep?)" in err
    assert "usage: crossdistill compress" in err
    with pytest.raises(CrossDistillError, match=r"unknown config key 'kep' \(did you mean 'keep'\?\)"):
        CompressConfig(model="resnet20", kep=0.5)


def test_python_dash_m_runs_the_command():
    """`python -m crossdistill` is the command itself, for an environment whose scripts are not on PATH."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "crossdistill", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("crossdistill "), out
    bad = subprocess.run([sys.executable, "-m", "crossdistill", "evaluate", "--model", "no_such_model"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "crossdistill evaluate: error" in bad.stderr, bad.stderr


def test_the_command_line_does_not_load_matplotlib_before_a_report_needs_it():
    """The parser imports every command; `report`'s module pulled in matplotlib (0.3 s of every
    `compress`) for a re-export."""
    import subprocess
    import sys

    code = ("import sys; from crossdistill.cli.main import build_parser; build_parser(); "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out


def test_a_failing_results_database_is_an_error_message_not_a_traceback(monkeypatch, capsys):
    """Disk full under a sweep raised sqlite3.OperationalError through the command."""
    import sqlite3

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("crossdistill.sweep.run_sweep", full)
    code = main(["sweep", "configs/smoke.yaml", "--db", "/tmp/never-written.sqlite"])
    err = capsys.readouterr().err
    assert code == 2 and "the results database failed: disk I/O error" in err and "Traceback" not in err


def test_the_settings_are_listed_from_python():
    """From Python there was no way to learn which settings compress takes (dir(crossdistill) did
    not even show compress): crossdistill.settings() lists them from the declarations."""
    import crossdistill

    assert {"compress", "load", "save", "settings", "StackedInputs"} <= set(dir(crossdistill))
    s = crossdistill.settings()
    assert s["keep"]["default"] == 0.5 and s["keep"]["for"] == "method channels"
    assert s["bits"]["range"] == "[2, 8]" and s["finetune_epochs"]["for"] == "fine-tune"
    assert "sparsity" in s["method"]["range"] and "gptq" in s["solver"]["range"]
    assert "weights" not in s and "shots" not in s  # compress's own arguments, or the command line's
    import inspect

    doc = inspect.getdoc(crossdistill.compress)
    assert "crossdistill.settings()" in doc and "docs/report.md" in doc
