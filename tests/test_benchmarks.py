"""The benchmark scripts run (at toy sizes) and print their tables: figures, not pass/fail."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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


def test_train_teacher_writes_fp16_weights_the_cli_reads_and_logs_each_epoch(tmp_path, capsys):
    import json
    import lzma

    import numpy as np
    import torch

    from crossdistill.models import load_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 48)
    # The training set in two parts, one of them xz-compressed: read back in order as one set.
    np.savez(tmp_path / "a.npz", x=x[:20], y=y[:20])
    np.savez(tmp_path / "b.npz", x=x[20:], y=y[20:])
    (tmp_path / "b.npz.xz").write_bytes(lzma.compress((tmp_path / "b.npz").read_bytes()))
    np.savez(tmp_path / "test.npz", x=x[:16], y=y[:16])
    tt = load("train_teacher")
    got_x, got_y = tt.read_arrays([str(tmp_path / "a.npz"), str(tmp_path / "b.npz.xz")])
    assert np.array_equal(got_x, x) and np.array_equal(got_y, y)

    out = tmp_path / "t" / "vgg16.safetensors"
    args = ["--data", str(tmp_path / "a.npz"), str(tmp_path / "b.npz.xz"), "--test", str(tmp_path / "test.npz"),
            "--epochs", "2", "--batch-size", "16", "--eval-every", "1", "--device", "cpu", "--out", str(out)]
    assert tt.main(args) == 0
    printed = capsys.readouterr().out
    log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all(e["n_test"] == 16 for e in log)
    assert not list(out.parent.glob("*.partial"))  # renamed into place once done
    assert log[-1]["lr"] < log[0]["lr"]  # the one-cycle schedule decays to the end
    model = load_model(out)  # name and spec from the file's metadata
    assert all(p.dtype == torch.float32 for p in model.parameters())
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("classifier.weight").dtype == torch.float16
    import hashlib

    assert hashlib.sha256(out.read_bytes()).hexdigest() in printed
    # The printed fp16 top-1 is what the saved file gives.
    from crossdistill.data import to_tensor
    from crossdistill.models import model_info

    info = model_info("vgg16")
    with torch.no_grad():
        pred = model.eval()(to_tensor(x[:16], info.mean, info.std)).argmax(1).numpy()
    assert f"top-1 {100.0 * float((pred == y[:16]).mean()):.2f} %" in printed


def test_train_teacher_refuses_bad_input_before_writing_anything(tmp_path):
    import lzma

    import pytest

    tt = load("train_teacher")
    (tmp_path / "bad.npz.xz").write_bytes(lzma.compress(b"not an npz"))
    out = tmp_path / "o" / "t.safetensors"
    for data, message in [(tmp_path / "missing.npz", "missing.npz: not a readable"),
                          (tmp_path / "bad.npz.xz", "bad.npz.xz: not a readable")]:
        with pytest.raises(SystemExit, match=message):
            tt.main(["--data", str(data), "--out", str(out), "--device", "cpu"])
    with pytest.raises(SystemExit):  # argparse: a usage error
        tt.main(["--data", str(data), "--out", str(out), "--epochs", "0"])
    assert not out.parent.exists()


def test_attention_coverage_prints_a_row_per_method(capsys):
    assert load("attention_coverage").main(["--depth", "1", "--dim", "24", "--heads", "2", "--shots", "2",
                                           "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")[1:]]
            for r in out.splitlines() if r.startswith("| ") and "method" not in r}
    assert set(rows) == {"teacher", "sparsity 0.5", "quant 4 bits"}
    # Half of every weight matrix but the first conv and the head is zero, the q/k/v included
    # (0.416 here; 0.312 and 0.46 of the size when they were left dense).
    assert 0.4 < float(rows["sparsity 0.5"][1]) < 0.5
    assert float(rows["quant 4 bits"][2]) < 0.4 * float(rows["teacher"][2])


def test_conv1d_signals_prints_a_row_per_method_with_a_score_per_k(capsys, tmp_path, monkeypatch):
    from sweep_helpers import write_fashion_idx

    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))  # the toy teacher goes there
    data = write_fashion_idx(tmp_path / "fmnist", n_train=200, n_test=40)
    args = ["--data", str(data), "--epochs", "1", "--width", "4", "--seeds", "0", "1", "--shots", "1",
            "--rows", "channels keep 0.5 (closed form)", "quant 3 bits"]
    assert load("conv1d_signals").main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["channels keep 0.5 (closed form)", "quant 3 bits"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")[1:]]
        assert len(cells) == 3 and 0 <= float(cells[0].split("±")[0]) <= 100 and int(cells[1].replace(",", "")) > 0
    assert list((tmp_path / "cache" / "teachers").glob("signal_net_w4_*.pt"))


@pytest.mark.parametrize("up", ["nearest", "transposed"])
def test_segmentation_prints_pixel_top1_and_miou_per_k(capsys, tmp_path, monkeypatch, up):
    from sweep_helpers import write_fashion_idx

    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))  # the toy teacher goes there
    data = write_fashion_idx(tmp_path / "fmnist", n_train=200, n_test=40)
    args = ["--data", str(data), "--epochs", "1", "--width", "4", "--seeds", "0", "1", "--shots", "1",
            "--threads", "1", "--rows", "channels keep 0.5 (closed form)", "quant 3 bits", "--up", up]
    assert load("segmentation").main(args) == 0
    out = capsys.readouterr().out
    assert "mean IoU" in out and "on 40 test images" in out and f"{up} up-sampling" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["channels keep 0.5 (closed form)", "quant 3 bits"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")[1:]]
        top, miou = (float(c.split("±")[0]) for c in cells[:2])
        assert len(cells) == 4 and 0 <= top <= 100 and 0 <= miou <= 100
        assert int(cells[2].replace(",", "")) > 0
    assert list((tmp_path / "cache" / "teachers").glob("unet_w4_*.pt" if up == "nearest" else "unet_transposed_w4_*.pt"))


def test_toy_wrappers_prints_a_row_per_model_and_seed(capsys):
    assert load("toy_wrappers").main(["--seeds", "0"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "seed" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| TextCNN on token ids, 200 test sentences, K=5",
                                                  "| TextEncoder on token ids, 200 test sentences, K=5",
                                                  "| StackedInputs text model, 300 test sentences, K=5",
                                                  "| GroupNorm net, 32 test inputs, N=32"]
    # Each row compares the re-solved student with pruning alone by the output error.
    for row in rows:
        ours, alone = (float(cell.split(" / ")[1]) for cell in row.rstrip(" |").split(" | ")[3:5])
        assert ours < alone


def test_vit_fashion_prints_rows_with_and_without_heads(capsys, tmp_path, monkeypatch):
    from sweep_helpers import write_fashion_idx

    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))  # the toy teacher goes there
    data = write_fashion_idx(tmp_path / "fmnist", n_train=200, n_test=40)
    args = ["--data", str(data), "--epochs", "1", "--width", "16", "--depth", "1", "--heads", "4", "--seeds", "0",
            "--shots", "1", "--threads", "1", "--rows", "channels keep 0.5 (closed form)",
            "channels keep 0.5 (closed form), heads whole"]
    assert load("vit_fashion").main(args) == 0
    out = capsys.readouterr().out
    assert "4 heads" in out and "on 40 test images" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in out.splitlines() if line.startswith("| ") and "method" not in line}
    assert list(rows) == ["channels keep 0.5 (closed form)", "channels keep 0.5 (closed form), heads whole"]
    pruned, whole = rows.values()
    assert 0 <= float(pruned[0].split("±")[0]) <= 100
    # Pruning heads too leaves fewer parameters and FLOPs at the same keep ratio.
    assert int(pruned[1].replace(",", "")) < int(whole[1].replace(",", "")) and float(pruned[2]) < float(whole[2])
    assert list((tmp_path / "cache" / "teachers").glob("vit_w16_d1_h4_*.pt"))
    # The same teacher with its attention written by hand: its heads are pruned as torch's are.
    assert load("vit_fashion").main(args + ["--attention", "hand"]) == 0
    out = capsys.readouterr().out
    assert "hand attention" in out and "trained in" not in out  # the cached teacher, converted
    hand = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in out.splitlines() if line.startswith("| ") and "method" not in line}
    assert [r[:2] for r in hand.values()] == [r[:2] for r in rows.values()]  # top-1 and parameters


def test_pointwise_moments_prints_a_row_per_shape(capsys):
    assert load("pointwise_moments").main(["--images", "2", "--scale", "8"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line
            and "seconds" not in line]
    assert len(rows) == 7 and all(float(r.strip("|").split("|")[-1]) >= 0 for r in rows)


def test_recurrent_fashion_prints_solved_and_data_free_rows(capsys, tmp_path, monkeypatch):
    from sweep_helpers import write_fashion_idx

    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    data = write_fashion_idx(tmp_path / "fmnist", n_train=200, n_test=40)
    args = ["--data", str(data), "--epochs", "1", "--width", "16", "--layers", "1", "--seeds", "0", "--shots", "1",
            "--threads", "1", "--kind", "gru", "--rows", "sparsity 0.8", "quant 3 bits, round to nearest"]
    assert load("recurrent_fashion").main(args) == 0
    out = capsys.readouterr().out
    assert "GRU row reader" in out and "on 40 test images" in out
    teacher = int(out.split(" parameters)")[0].rsplit("(", 1)[1].replace(",", ""))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in out.splitlines() if line.startswith("| ") and "method" not in line}
    assert list(rows) == ["sparsity 0.8", "quant 3 bits, round to nearest"]
    sparse = int(rows["sparsity 0.8"][1].replace(",", ""))
    assert sparse < 0.5 * teacher  # the GRU's gate weights were made sparse too, not only the two Linears
    assert list((tmp_path / "cache" / "teachers").glob("row_gru_w16_l1_*.pt"))
