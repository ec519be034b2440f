"""A user's own model: the Python API on any nn.Module, `--model path/to/file.py:function` on the
command line, saving and loading without the registry, and clear errors before any work."""
from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import crossdistill
from crossdistill.cli.main import main
from crossdistill.errors import CrossDistillError
from crossdistill.data import load_indices
from sweep_helpers import write_npz_pair

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 12, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))

    def not_a_model():
        return 3
""")


@pytest.fixture
def factory(tmp_path) -> str:
    path = tmp_path / "models" / "mynet.py"
    path.parent.mkdir()
    path.write_text(FACTORY)
    return f"{path}:make"


@pytest.fixture
def data(tmp_path):
    return write_npz_pair(tmp_path / "data", n_train=100, n_test=40)


def images(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=gen), torch.arange(n) % 10


def test_api_on_tensors_dataset_and_loader_gives_the_same_student(factory):
    from crossdistill.models.user import build_user_model

    model = build_user_model(factory).eval()
    x, y = images()
    a, report = crossdistill.compress(model, x, labels=y, shots=2, eval_data=(x, y), show_progress=False)
    b, _ = crossdistill.compress(model, TensorDataset(x, y), shots=2, show_progress=False)
    c, _ = crossdistill.compress(model, DataLoader(TensorDataset(x, y), batch_size=7), shots=2, show_progress=False)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))
    assert report["student"]["params"] < report["teacher"]["params"] and report["student"]["n_eval"] == 60
    assert report["channel_groups"]["pruned"] and report["n_samples"] == 20
    assert sum(p.numel() for p in model.parameters()) == report["teacher"]["params"]  # teacher untouched


def test_api_on_a_data_folder_reads_its_train_split_normalised_as_the_registered_model(tmp_path):
    # A folder holds both splits: the few-shot images come from train, the evaluation from test,
    # and a registered model's pixels are normalised with its own mean/std unless told otherwise.
    from crossdistill.data import load_image_data, to_tensor
    from crossdistill.models import create_model, model_info
    from sweep_helpers import write_fashion_idx

    folder = write_fashion_idx(tmp_path / "fashion", n_train=120, n_test=30)
    teacher = create_model("fashion_cnn").eval()
    info = model_info("fashion_cnn")
    assert any(m != 0 for m in info.mean)  # else the default would go unnoticed
    a, report = crossdistill.compress(teacher, folder, shots=2, eval_data=folder, show_progress=False)
    train = load_image_data(folder, "train")
    x, y = to_tensor(train.x, info.mean, info.std), torch.as_tensor(train.y)
    b, _ = crossdistill.compress(teacher, x, labels=y, shots=2, show_progress=False)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert report["student"]["n_eval"] == 30 and max(report["fewshot_indices"]) < 120


def test_saved_user_model_loads_without_the_registry(factory, tmp_path):
    from crossdistill.models.user import build_user_model

    model = build_user_model(factory).eval()
    x, y = images()
    student, _ = crossdistill.compress(model, x, labels=y, shots=2, show_progress=False)
    path = crossdistill.save(student, tmp_path / "s.safetensors")
    loaded = crossdistill.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    # The factory's file moved: loading names it again.
    moved = tmp_path / "elsewhere.py"
    shutil.move(factory.split(":")[0], moved)
    with pytest.raises(CrossDistillError, match=r"no such file.*give it where it is now \(command line: --model "
                                                 r"FILE.py:FUNCTION; Python: crossdistill.load\(path, factory="):
        crossdistill.load(path)
    with torch.no_grad():
        assert torch.equal(crossdistill.load(path, factory=f"{moved}:make")(x), student(x))


def test_a_relative_factory_loads_from_any_folder_and_a_moved_one_is_named_again(
        factory, data, tmp_path, capsys, monkeypatch):
    """`--model mynet.py:make` written from the factory's folder (the README's form): the run loads,
    evaluates and exports from elsewhere; once the file moved, --model names it again."""
    import json

    train, test = data
    folder = Path(factory.split(":")[0]).parent
    monkeypatch.chdir(folder)
    out = tmp_path / "run"
    relative = Path("..") / train.relative_to(tmp_path)  # typed from the factory's folder, like the factory
    assert main(["compress", "--model", "mynet.py:make", "--data", str(relative), "--shots", "2", "--quiet",
                 "--out", str(out)]) == 0
    monkeypatch.chdir(tmp_path)
    x = torch.randn(3, 1, 28, 28)
    student = crossdistill.load(out)
    capsys.readouterr()
    moved = tmp_path / "moved.py"
    shutil.move(folder / "mynet.py", moved)
    argv = ["evaluate", "--weights", str(out), "--eval-data", str(test), "--no-latency", "--json", "--quiet"]
    assert main(argv) != 0 and "no such file" in capsys.readouterr().err
    assert main(argv + ["--model", f"{moved}:make"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["params"] == sum(p.numel() for p in student.parameters())
    assert shown["model"] == f"{moved}:make"  # the factory it ran, not the one the file names, now gone
    assert load_indices(out / "fewshot_indices.json")[1]["data"] == str(train.resolve())
    with torch.no_grad():
        assert torch.equal(crossdistill.load(out, model=f"{moved}:make")(x), student(x))


def test_cli_takes_a_factory(factory, data, tmp_path, capsys):
    train, test = data
    out = tmp_path / "run"
    assert main(["compress", "--model", factory, "--data", str(train), "--eval-data", str(test), "--shots", "3",
                 "--quiet", "--out", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["peak_memory_mib"] > 10 and report["processes"] == 1
    assert report["device"] == "cpu" and report["gpu_peak_memory_mib"] is None
    loaded = crossdistill.load(out)
    assert sum(p.numel() for p in loaded.parameters()) < sum(
        p.numel() for p in crossdistill.models.user.build_user_model(factory).parameters())
    # The run folder evaluates like a registered model's: the run's own student top-1 again.
    assert main(["evaluate", "--weights", str(out), "--eval-data", str(test), "--no-latency", "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["top1"] == report["student"]["top1"] and evaluated["n_eval"] == report["student"]["n_eval"]
    assert evaluated["model"] == factory and evaluated["params"] == report["student"]["params"]
    # A loaded user model saves again (e.g. after a fine-tune of one's own) and loads the same.
    again = crossdistill.load(crossdistill.save(loaded, tmp_path / "again.safetensors"))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again(x), loaded(x))


def test_evaluate_takes_your_own_trained_model_from_its_factory_and_state_dict(factory, data, tmp_path, capsys):
    # `evaluate --model file.py:fn --weights teacher.pt` said "unknown model": only saved students loaded.
    import json

    from crossdistill.models.user import build_user_model

    train, test = data
    weights = tmp_path / "teacher.pt"
    torch.save(build_user_model(factory).state_dict(), weights)
    out = tmp_path / "run"
    common = ["--mean", "0.3", "--std", "0.25"]
    assert main(["compress", "--model", factory, "--weights", str(weights), "--data", str(train), "--eval-data",
                 str(test), "--shots", "2", "--quiet", "--out", str(out), *common]) == 0
    teacher = json.loads((out / "report.json").read_text())["teacher"]
    capsys.readouterr()
    assert main(["evaluate", "--model", factory, "--weights", str(weights), "--eval-data", str(test), "--no-latency",
                 "--json", "--quiet", *common]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["top1"] == teacher["top1"] and evaluated["n_eval"] == teacher["n_eval"]
    assert main(["evaluate", "--weights", str(out), "--eval-data", str(test), "--no-latency", "--quiet",
                 *common]) == 2
    assert "--mean/--std: this file records the normalisation its model expects" in capsys.readouterr().err
    # Without --weights the run is on the factory's own initialisation: said in one line.
    assert main(["compress", "--model", factory, "--data", str(train), "--shots", "2", "--quiet",
                 "--out", str(tmp_path / "untrained")]) == 0
    assert f"crossdistill: warning: no --weights: the teacher is what {factory} returns" in capsys.readouterr().err


@pytest.mark.parametrize("spec,message", [
    ("{dir}/nope.py:make", "no such file"),
    ("{dir}/models/mynet.py:missing", "has no function 'missing'"),
    ("{dir}/models/mynet.py:not_a_model", "returned int, not an nn.Module"),
])
def test_bad_factories_are_named_before_any_work(factory, data, tmp_path, capsys, spec, message):
    train, _ = data
    spec = spec.format(dir=tmp_path)
    assert main(["compress", "--model", spec, "--data", str(train), "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_input_size_that_does_not_fit_is_named(factory, data, tmp_path, capsys):
    train, _ = data
    assert main(["compress", "--model", factory, "--data", str(train), "--input-size", "3", "28", "28",
                 "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "input of size (3, 28, 28) failed" in err and "--input-size" in err
    assert not (tmp_path / "o").exists()


def test_the_api_refuses_what_it_cannot_use():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(CrossDistillError, match="needs labels"):
        crossdistill.compress(model, torch.randn(10, 4), shots=1)
    with pytest.raises(CrossDistillError, match="NaN"):
        crossdistill.compress(model, torch.full((10, 4), float("nan")))
    with pytest.raises(CrossDistillError, match="must be a torch.nn.Module"):
        crossdistill.compress("resnet20", torch.randn(10, 4))


def test_labels_are_checked_against_the_models_classes():
    # Labels beyond the model's outputs ran silently (0 % for teacher and student alike), and a
    # training set lacking classes drew without a word: the draw numbered classes by the labels.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(30, 4)
    with pytest.raises(CrossDistillError, match=r"label 5 is not a class of the model, which has 3 outputs"):
        crossdistill.compress(model, x, labels=torch.arange(30) % 6, shots=2, method="quant", bits=8, show_progress=False)
    with pytest.warns(UserWarning, match="cover 2 of the model's 3 classes"):
        _, report = crossdistill.compress(model, x, labels=torch.arange(30) % 2, shots=2, method="quant", bits=8, show_progress=False)
    assert report["fewshot_class_counts"] == [2, 2, 0]
    with pytest.raises(CrossDistillError, match="eval_data label 7 is not a class of the model, which has 3 outputs"):
        crossdistill.compress(model, x, labels=torch.arange(30) % 3, shots=2, eval_data=(x, torch.arange(30) % 8),
                              method="quant", bits=8, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"eval_data samples have shape \(5,\) torch.float32, the training data's \(4,\)"):
        crossdistill.compress(model, x, labels=torch.arange(30) % 3, shots=2, eval_data=(torch.randn(9, 5), torch.arange(9) % 3),
                              method="quant", bits=8, show_progress=False)
    with pytest.raises(CrossDistillError, match="fractional values such as 0.5.*predicts values.*inputs alone"):
        crossdistill.compress(model, x, labels=torch.arange(30) % 3 + 0.5, shots=2, method="quant", bits=8, show_progress=False)
    # One label map per output of a two-output model: not one array (a numpy ValueError before).
    maps = (torch.zeros(30, 3).numpy(), torch.zeros(30, 2, 2).numpy())
    with pytest.raises(CrossDistillError, match="labels must be one array.*score one output.*inputs given alone"):
        crossdistill.compress(model, x, labels=torch.arange(30) % 3, shots=2, eval_data=(x, maps),
                              method="quant", bits=8, show_progress=False)


def test_data_forms_that_cannot_be_read_as_pairs_are_named_and_numpy_pairs_work():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    a, ra = crossdistill.compress(model, x, labels=y, shots=2, eval_data=(x.numpy(), y.numpy()), method="quant", bits=8, show_progress=False)
    b, rb = crossdistill.compress(model, x, labels=y, shots=2, eval_data=(x, y), method="quant", bits=8, show_progress=False)
    assert ra["teacher"]["top1"] == rb["teacher"]["top1"] and ra["student"]["n_eval"] == 30

    class Dicts(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 30

        def __getitem__(self, i: int) -> dict:
            return {"image": x[i], "label": y[i]}

    with pytest.raises(CrossDistillError, match=r"yields dicts \(keys \['image', 'label'\]\); give \(image, label\) pairs"):
        crossdistill.compress(model, Dicts(), shots=2, method="quant", bits=8, show_progress=False)
    with pytest.warns(UserWarning, match="the DataLoader.s RandomSampler orders the samples"):
        crossdistill.compress(model, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), shots=2,
                              method="quant", bits=8, show_progress=False)


def test_mean_and_std_with_tensor_data_are_refused_not_ignored():
    # They were recorded in the student while the tensors went in unnormalised.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    with pytest.raises(CrossDistillError, match="mean/std normalise pixels read from files; data given as tensors"):
        crossdistill.compress(model, torch.rand(12, 3, 6, 6), labels=torch.arange(12) % 3, shots=2,
                              mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), show_progress=False)


def test_a_class_of_ones_own_named_like_a_registered_model_keeps_its_own_settings():
    resnet20 = type("resnet20", (nn.Sequential,), {})  # a user's class that happens to share the name
    model = resnet20(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                     nn.Linear(4, 3)).eval()
    x, y = torch.randn(12, 3, 8, 8), torch.arange(12) % 3
    student, _ = crossdistill.compress(model, x, labels=y, shots=2, method="quant", bits=8, show_progress=False)
    info = student.crossdistill_info
    # Not the registered ResNet-20's mean/std: unknown, as for any model compressed from tensors.
    assert info.mean == () and info.std == () and info.num_classes == 3 and info.family == "user"


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):
        return self.fc(x), x


def test_models_the_solvers_cannot_take_are_named_with_what_to_do():
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    # An output that passes the input through has nothing to trace from; the logits are scored.
    student, report = crossdistill.compress(TwoOutputs(), x, labels=y, shots=2, method="sparsity", sparsity=0.5,
                                            prune_last=True, eval_data=(x, y), show_progress=False)
    assert report["predictions"] == {"output": None, "kind": "classes"} and "top1" in report["student"]
    with pytest.raises(CrossDistillError, match=r"output_key '2': the model returns a tuple of 2 \(\(2, 3\), \(2, 4\)\)"):
        crossdistill.compress(TwoOutputs(), x, labels=y, shots=2, output_key="2")
    with pytest.raises(CrossDistillError, match=r"parameters are bfloat16; compress a float32 copy \(model.float\(\)\)"):
        crossdistill.compress(nn.Linear(4, 3).to(torch.bfloat16), x, labels=y, shots=2)


def test_api_on_the_shared_cifar_files_normalises_as_the_registered_teacher():
    # The teacher's top-1 through the API from the raw .npz files is the one the CLI reports
    # (91.5 % on the 1000 test images): the pixels got the registered model's mean/std.
    from crossdistill.models import create_model
    from crossdistill.models.checkpoint import load_state_dict_file
    from crossdistill.paths import shared_data_dir

    weights = shared_data_dir() / "weights" / "resnet20-12fca82f.th"
    train = shared_data_dir() / "cifar10" / "cifar10_train.npz"
    test = shared_data_dir() / "cifar10" / "cifar10_test1000.npz"
    if not (weights.is_file() and train.is_file() and test.is_file()):
        pytest.skip(f"shared teacher or CIFAR-10 files absent under {shared_data_dir()} (set CROSSDISTILL_DATA)")
    teacher = create_model("resnet20")
    teacher.load_state_dict(load_state_dict_file(weights))
    student, report = crossdistill.compress(teacher.eval(), train, shots=1, eval_data=test, keep=0.7,
                                            show_progress=False)
    assert report["teacher"]["n_eval"] == 1000 and round(report["teacher"]["top1"], 1) == 91.5
    assert report["student"]["top1"] > 50.0  # a working student, not one fed mis-scaled pixels


@pytest.mark.parametrize("wrap", ["data_parallel", "compile"])
def test_a_wrapped_model_gives_the_plain_modules_student(factory, wrap):
    """DataParallel and torch.compile wrap the user's module: the student is the module itself,
    its layer names and saved keys those of the unwrapped model, and the same as from it."""
    from crossdistill.models.user import build_user_model

    model = build_user_model(factory).eval()
    wrapped = nn.DataParallel(model) if wrap == "data_parallel" else torch.compile(model)
    x, y = images()
    a, report = crossdistill.compress(wrapped, x, labels=y, shots=2, method="sparsity", sparsity=0.5,
                                      show_progress=False)
    b, _ = crossdistill.compress(model, x, labels=y, shots=2, method="sparsity", sparsity=0.5, show_progress=False)
    assert type(a) is type(model) and list(a.state_dict()) == list(model.state_dict())
    assert {e["name"] for e in report["sparsity"]["layers"]} == {n for n, m in model.named_modules()
                                                                if isinstance(m, (nn.Conv2d, nn.Linear))}
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert a.crossdistill_factory == factory  # saving rebuilds it from the user's factory


def test_a_channels_last_model_gives_a_channels_last_student(factory):
    from crossdistill.models.user import build_user_model

    model = build_user_model(factory).eval().to(memory_format=torch.channels_last)
    x, y = images()
    student, _ = crossdistill.compress(model, x, labels=y, shots=2, keep=0.5, show_progress=False)
    conv = student[3]  # the 3x3 stride-2 conv, its input pruned
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    plain, _ = crossdistill.compress(build_user_model(factory).eval(), x, labels=y, shots=2, keep=0.5,
                                     show_progress=False)
    assert plain[3].weight.is_contiguous()  # a row-major model keeps its layout too
    with torch.no_grad():
        torch.testing.assert_close(student(x), plain(x), rtol=1e-4, atol=1e-4)


def test_a_factory_named_on_the_wrapper_goes_to_the_student_not_into_the_callers_module():
    inner = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    wrapped = nn.DataParallel(inner)
    wrapped.crossdistill_factory = "mine.py:make"
    x, y = images()
    student, _ = crossdistill.compress(wrapped, x, labels=y, shots=2, method="quant", bits=8, show_progress=False)
    assert student.crossdistill_factory == "mine.py:make"
    assert not hasattr(inner, "crossdistill_factory")  # the caller's module was written to before



def test_compress_leaves_the_callers_model_as_it_was(factory):
    """In train mode (a user mid-training) the model comes back in train mode, weights and
    BatchNorm statistics untouched; the report's teacher top-1 is still measured in eval mode."""
    from crossdistill.models.user import build_user_model

    model = build_user_model(factory).train()
    model[1].training = False  # a part deliberately kept in eval mode stays so
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = images()
    _, report = crossdistill.compress(model, x, labels=y, shots=2, method="quant", bits=4, eval_data=(x, y),
                                      show_progress=False)
    assert model.training and not model[1].training and all(m.training for i, m in enumerate(model) if i != 1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        eval_top1 = 100.0 * float((model.eval()(x).argmax(1) == y).float().mean())
    assert report["teacher"]["top1"] == pytest.approx(eval_top1)


def test_a_student_compressed_from_tensors_is_evaluated_with_the_normalisation_given_then(tmp_path, factory, data,
                                                                                         capsys):
    # Its tensors were normalised by the caller: the file must not claim mean 0 / std 1, which
    # `evaluate` would apply to raw pixels (a silently wrong top-1).
    import json

    from crossdistill.data import load_image_data, to_tensor
    from crossdistill.models.user import build_user_model

    train, test = data
    mean, std = (0.3,), (0.2,)
    arrays = load_image_data(str(train), "train")
    x, y = to_tensor(arrays.x, mean, std), torch.as_tensor(arrays.y).long()
    model = build_user_model(factory).eval()
    student, _ = crossdistill.compress(model, x, labels=y, shots=3, method="quant", bits=8, show_progress=False)
    path = crossdistill.save(student, tmp_path / "s.safetensors")
    args = ["evaluate", "--weights", str(path), "--eval-data", str(test), "--no-latency", "--quiet"]
    assert main(args) == 2
    assert "does not know how pixels were normalised for it: give --mean and --std" in capsys.readouterr().err
    assert main([*args, "--json", "--mean", "0.3", "--std", "0.2"]) == 0
    tx = to_tensor(load_image_data(str(test), "test").x, mean, std)
    ty = torch.as_tensor(load_image_data(str(test), "test").y).long()
    with torch.no_grad():
        expected = float((student(tx).argmax(1) == ty).float().mean() * 100)
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(expected)
    from crossdistill.export import export

    with pytest.raises(CrossDistillError, match="leave --eval-data out"):
        export(str(path), "onnx", tmp_path / "s.onnx", eval_data=str(test))
    assert export(str(path), "onnx", tmp_path / "s.onnx").max_abs_diff <= 1e-4


class BatchBranch(nn.Module):
    """Skips a BatchNorm on batches of 4 or fewer: traced on 1-2 samples, its BN is never seen."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        if x.shape[0] > 4:
            x = self.b1(x)
        return self.fc(torch.relu(self.c2(torch.relu(x))).mean((2, 3)))


def test_a_forward_that_branches_on_the_batch_size_is_caught_not_shipped_broken():
    # The student came back slimmed from the small-batch graph and failed on any batch over 4.
    torch.manual_seed(0)
    x = torch.randn(40, 3, 16, 16)
    with pytest.raises(CrossDistillError, match=r"fails on a batch of 8 .*running_mean.*branch on x.shape\[0\]"):
        crossdistill.compress(BatchBranch().eval(), x, n_samples=3, keep=0.5, show_progress=False)
    student, _ = crossdistill.compress(BatchBranch().eval(), x, n_samples=3, method="sparsity", sparsity=0.5,
                                       show_progress=False)
    assert student(x[:8]).shape == (8, 4)


def test_frozen_parameters_stay_frozen_in_a_slimmed_student():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    teacher[0].weight.requires_grad_(False)
    teacher[1].weight.requires_grad_(False)
    student, _ = crossdistill.compress(teacher, torch.randn(20, 3, 8, 8), n_samples=10, keep=0.5, show_progress=False)
    assert student[0].out_channels == 4  # slimmed: its parameters are new tensors
    assert not student[0].weight.requires_grad and not student[1].weight.requires_grad
    assert student[0].bias.requires_grad and student[3].weight.requires_grad


def _frozen_test_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("frozen", ["all", "backbone"])
def test_a_frozen_model_is_pruned_as_the_same_model_unfrozen(frozen):
    # Autograd recorded nothing from frozen layers: model.requires_grad_(False) was refused as
    # "not traced ... torch.no_grad() or .detach()", a frozen backbone silently left whole.
    torch.manual_seed(0)
    teacher = _frozen_test_net()
    x = torch.randn(20, 3, 8, 8)
    plain, _ = crossdistill.compress(teacher, x, n_samples=10, keep=0.5, show_progress=False)
    for p in (teacher.parameters() if frozen == "all" else teacher[:6].parameters()):
        p.requires_grad_(False)
    grads = [p.requires_grad for p in teacher.parameters()]
    student, report = crossdistill.compress(teacher, x, n_samples=10, keep=0.5, show_progress=False)
    assert [student[i].out_channels for i in (0, 3, 6)] == [plain[i].out_channels for i in (0, 3, 6)] == [4, 4, 8]
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), plain.state_dict().values()))
    assert [p.requires_grad for p in teacher.parameters()] == grads  # the caller's flags as they were


def test_a_frozen_layer_stays_frozen_when_low_rank_replaces_it():
    # Its factors (c.0.weight, c.1.weight) had requires_grad=True, and the fine-tune trained them.
    torch.manual_seed(0)
    teacher = _frozen_test_net()
    teacher[3].requires_grad_(False)
    x, y = torch.randn(30, 3, 8, 8), torch.arange(30) % 3
    student, _ = crossdistill.compress(teacher, x, labels=y, shots=5, method="lowrank", rank_ratio=0.5,
                                       finetune_epochs=2, finetune_lr=0.1, show_progress=False)
    factors = dict(student[3].named_parameters())
    assert set(factors) >= {"0.weight", "1.weight"} and not any(p.requires_grad for p in factors.values())
    assert student[6][0].weight.requires_grad  # the layers left trainable still are
    # A frozen weight beside a trainable bias (BitFit): the factors' weights frozen, the bias not.
    teacher = _frozen_test_net()
    teacher[3].weight.requires_grad_(False)
    student, _ = crossdistill.compress(teacher, x, labels=y, shots=5, method="lowrank", rank_ratio=0.5,
                                       show_progress=False)
    assert {n: p.requires_grad for n, p in student[3].named_parameters()} == \
        {"0.weight": False, "1.weight": False, "1.bias": True}


def test_the_api_refuses_what_it_would_otherwise_drop_and_gives_the_model_back_as_it_was():
    torch.manual_seed(0)
    x, y = torch.randn(24, 3, 8, 8), torch.arange(24) % 3

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 3)
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            self.calls += 1  # the caller's own state: compressing must not change it
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(t)))).mean((2, 3)))

    model = Counting().eval()
    with pytest.raises(CrossDistillError, match="labels given twice"):
        crossdistill.compress(model, (x, y), labels=y, shots=2, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"give shots \(K=2 per class\) or n_samples \(N=5 in all\), not both"):
        crossdistill.compress(model, x, labels=y, shots=2, n_samples=5, show_progress=False)
    with pytest.raises(CrossDistillError, match="seed must be an integer >= 0, got -1"):
        crossdistill.compress(model, x, labels=y, shots=2, seed=-1, show_progress=False)
    student, report = crossdistill.compress(model, (x, y), keep=0.5, eval_data=(x, y), show_progress=False)
    assert int(model.calls) == 0 and int(student.calls) > 0
    assert report["shots"] is None and report["n_samples"] == 24  # every image: no K, but the key is there


def test_an_empty_eval_set_and_a_lone_image_are_named_as_such():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    x = torch.randn(12, 3, 8, 8)
    with pytest.raises(CrossDistillError, match="eval_data holds no samples"):  # it spoke of labels marked 255
        crossdistill.compress(model, x, n_samples=6, eval_data=x[:0], show_progress=False)
    # One image (3, 8, 8) reads as 3 samples of (8, 8): the message said to give 3 channels.
    with pytest.raises(CrossDistillError, match=r"first conv takes samples of 3 dimensions, these are \(8, 8\): give a "
                                                r"batch \(N, C, H, W\)"):
        crossdistill.compress(model, x[0], n_samples=1, show_progress=False)


def test_a_loaded_student_is_an_instance_of_the_callers_own_class(tmp_path, monkeypatch):
    # The file was imported a second time under a name of crossdistill's: the loaded student's
    # class was a twin, and isinstance(loaded, mymodels.Net) was False.
    import importlib
    import textwrap

    (tmp_path / "mymodels_probe.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Sequential):
            def __init__(self):
                super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

        def make():
            return Net()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    mymodels = importlib.import_module("mymodels_probe")
    try:
        torch.manual_seed(0)
        student, _ = crossdistill.compress(mymodels.make().eval(), torch.randn(12, 3, 8, 8), n_samples=6, keep=0.5,
                                           show_progress=False)
        student.crossdistill_factory = f"{tmp_path / 'mymodels_probe.py'}:make"
        loaded = crossdistill.load(crossdistill.save(student, tmp_path / "s.safetensors"))
        assert isinstance(loaded, mymodels.Net) and loaded[0].out_channels == 4
    finally:
        sys.modules.pop("mymodels_probe", None)


def test_a_dataloader_that_drops_its_last_batch_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    loader = DataLoader(TensorDataset(torch.randn(20, 3, 8, 8), torch.arange(20) % 3), batch_size=8, drop_last=True)
    with pytest.warns(UserWarning, match=r"drops its last 4 training samples \(drop_last=True\)"):
        _, report = crossdistill.compress(model, loader, method="quant", bits=8, show_progress=False)
    assert report["n_samples"] == 16


def test_a_forward_that_stores_its_tensors_on_the_model_is_compressed_and_left_as_it_was():
    """`self.feat = x; self.calls += 1` in the forward: copying the model refused the stored
    non-leaf tensor (every channel group was left whole, blamed on the trace), and the caller's
    model came back holding one of the run's tensors and a changed counter."""
    from torch import nn

    class Stores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), \
                nn.Conv2d(16, 16, 3, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls = getattr(self, "calls", 0) + 1
            x = torch.relu(self.c1(x))
            self.feat = x
            return self.fc(torch.relu(self.c3(torch.relu(self.c2(x)))).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Stores().eval(), torch.randn(40, 3, 10, 10)
    model(x[:2])  # with autograd on, as a user's own check would: feat is now a non-leaf tensor
    feat, calls = model.feat, model.calls
    student, report = crossdistill.compress(model, x, labels=torch.arange(40) % 10, shots=2, keep=0.5,
                                            show_progress=False)
    assert {tuple(e["producers"]) for e in report["channel_groups"]["pruned"]} == {("c1",), ("c2",)}
    assert model.feat is feat and model.calls == calls
    assert student(x[:3]).shape == (3, 10)


def test_a_channels_last_student_loads_channels_last_and_computes_the_same(factory, tmp_path):
    """A channels_last student (its teacher was kept so) loaded contiguous: its outputs differed by
    up to 1e-6 from the saved model's, against the bit-for-bit promise."""
    from crossdistill.device import is_channels_last
    from crossdistill.models.user import build_user_model

    model = build_user_model(factory).eval().to(memory_format=torch.channels_last)
    x, y = images()
    student, _ = crossdistill.compress(model, x, labels=y, shots=2, keep=0.5, show_progress=False)
    assert is_channels_last(student)
    loaded = crossdistill.load(crossdistill.save(student, tmp_path / "s.safetensors"))
    assert is_channels_last(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    plain = crossdistill.load(crossdistill.save(loaded.to(memory_format=torch.contiguous_format),
                                                tmp_path / "p.safetensors"))
    assert not is_channels_last(plain)


def test_the_api_honours_or_refuses_every_run_setting_it_accepts():
    """sampler='first', baseline=, threads= and latency= were accepted by crossdistill.compress and
    silently ignored (the report's config still claimed them); weights= and input_size= did nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(30, 3, 8, 8), torch.arange(30) % 3
    _, first = crossdistill.compress(model, x, labels=y, shots=2, sampler="first", show_progress=False)
    assert first["fewshot_indices"] == [0, 1, 2, 3, 4, 5] and first["sampler"] == "first"
    _, default = crossdistill.compress(model, x, labels=y, shots=2, show_progress=False)
    assert default["fewshot_indices"] != first["fewshot_indices"]
    l1, report = crossdistill.compress(model, x, labels=y, shots=2, baseline="l1", show_progress=False)
    assert report["baseline"] == "l1" and report["solver"].startswith("prune-only")
    kept = report["layers"][0]["kept"]  # L1 keeps the teacher's weights on the kept channels
    torch.testing.assert_close(l1[2].weight, model[2].weight[:, kept])
    before = torch.get_num_threads()
    _, timed = crossdistill.compress(model, x, labels=y, shots=2, threads=1, latency=True, eval_data=(x, y),
                                     show_progress=False)
    assert torch.get_num_threads() == before and timed["threads"] == 1
    assert [t["batch_size"] for t in timed["student"]["latency"]] == [1, 128]
    assert {t["threads"] for t in timed["teacher"]["latency"]} == {1}
    for key in ("weights", "input_size"):
        with pytest.raises(CrossDistillError, match=f"{key}= is a setting of the command line"):
            crossdistill.compress(model, x, labels=y, shots=2, show_progress=False,
                                  **{key: "w.pt" if key == "weights" else [3, 8, 8]})


def test_mixed_without_mu_names_the_mu_a_model_of_ones_own_gets():
    """objective='mixed' on a model the registry does not know ran μ 0.9 and reported 'mixed' with
    mu None in its config: the μ it used was nowhere."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(30, 3, 8, 8), torch.arange(30) % 3
    a, report = crossdistill.compress(model, x, labels=y, shots=2, objective="mixed", show_progress=False)
    b, _ = crossdistill.compress(model, x, labels=y, shots=2, objective="mixed", mu=0.9, show_progress=False)
    assert report["objective"] == "mixed(mu=0.9)"
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_shuffling_loaders_warning_points_at_the_callers_line():
    """The warning named api.py:302 instead of the line that called compress."""
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    loader = DataLoader(TensorDataset(torch.randn(12, 3, 8, 8), torch.arange(12) % 3), batch_size=4, shuffle=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crossdistill.compress(model, loader, method="quant", bits=8, show_progress=False)
    shuffled = [w for w in caught if "RandomSampler orders the samples" in str(w.message)]
    assert shuffled and shuffled[0].filename == __file__


def test_eval_data_given_as_inputs_and_none_is_unlabelled():
    """eval_data=(x, None) raised numpy's TypeError from inside the label conversion."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    x, y = torch.randn(30, 3, 8, 8), torch.arange(30) % 3
    _, pair = crossdistill.compress(model, x, labels=y, shots=2, method="quant", eval_data=(x, None),
                                    show_progress=False)
    _, alone = crossdistill.compress(model, x, labels=y, shots=2, method="quant", eval_data=x, show_progress=False)
    assert "top1" not in pair["student"] and pair["agreement"] == alone["agreement"]


def test_image_files_without_mean_and_std_are_named_once_per_entry_point(factory, data, tmp_path, capsys):
    # A model of one's own fed pixels in [0, 1] scores near chance when it was trained on
    # normalised inputs; nothing said why (the teacher's 37 % looked like the model's own).
    train, test = data
    run = ["compress", "--model", factory, "--data", str(train), "--shots", "1", "--quiet"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0
    assert "warning: no --mean/--std given: " in capsys.readouterr().err
    assert main([*run, "--mean", "0.3", "--std", "0.35", "--out", str(tmp_path / "b")]) == 0
    assert "--mean/--std" not in capsys.readouterr().err
    weights = tmp_path / "w.pt"
    from crossdistill.models.user import build_user_model

    torch.save(build_user_model(factory).state_dict(), weights)
    assert main(["evaluate", "--model", factory, "--weights", str(weights), "--eval-data", str(test), "--quiet"]) == 0
    assert "warning: no --mean/--std given" in capsys.readouterr().err
    model = build_user_model(factory).eval()
    with pytest.warns(crossdistill.checks.NormalisationWarning, match="no mean/std given"):
        crossdistill.compress(model, train, shots=1, show_progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", crossdistill.checks.NormalisationWarning)
        x, y = images()
        crossdistill.compress(model, x, labels=y, shots=1, show_progress=False)  # tensors: used as given
        crossdistill.compress(model, train, shots=1, mean=[0.3], std=[0.35], show_progress=False)


def test_weights_that_do_not_fit_the_default_model_say_it_is_the_default(factory, data, tmp_path, capsys):
    from crossdistill.models.user import build_user_model

    weights = tmp_path / "mine.pt"
    torch.save(build_user_model(factory).state_dict(), weights)
    run = ["compress", "--weights", str(weights), "--data", str(data[0]), "--shots", "1", "--quiet"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 2
    assert "(--model defaults to resnet56: name your model with --model path/to/file.py:function" in \
        capsys.readouterr().err
    assert main([*run, "--model", "resnet20", "--out", str(tmp_path / "b")]) == 2
    assert "defaults to" not in capsys.readouterr().err  # another registered model named: its own mismatch
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_factory_named_without_its_function_or_as_a_module_gets_the_file_form(factory, data, tmp_path,
                                                                              monkeypatch, capsys):
    folder = Path(factory.rpartition(":")[0]).parent
    monkeypatch.chdir(folder)
    run = ["compress", "--data", str(data[0]), "--shots", "1", "--quiet", "--out", str(tmp_path / "o")]
    assert main([*run, "--model", "mynet.py"]) == 2
    assert "a model of your own is named with the function that builds it, mynet.py:function" in \
        capsys.readouterr().err
    assert main([*run, "--model", "mynet:make"]) == 2  # the command does not import from the current folder
    assert "a file of your own is named by its path: --model mynet.py:make" in capsys.readouterr().err


def test_a_bug_in_the_forward_is_chained_and_gets_no_input_size_advice():
    class Typo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.preprocess(x)  # the user's own bug, before the first conv runs
            return self.fc(self.conv(x).mean((2, 3)))

    x, y = images(20)
    with pytest.raises(CrossDistillError, match="AttributeError") as info:
        crossdistill.compress(Typo(), x, labels=y, shots=1, show_progress=False)
    assert "--input-size" not in str(info.value)
    assert isinstance(info.value.__cause__, AttributeError)  # the user's frame stays in the traceback


def test_a_model_that_fails_on_batches_itself_is_not_blamed_on_the_compression():
    class SmallBatches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 4:
                raise RuntimeError("this model takes at most 4 images at a time")
            return self.fc(self.b(torch.relu(self.a(x))).mean((2, 3)))

    from crossdistill.pipeline import _check_runs_batched

    teacher = SmallBatches().eval()
    with pytest.raises(CrossDistillError, match="the teacher as well as the compressed model") as info:
        _check_runs_batched(teacher, SmallBatches().eval(), torch.randn(2, 1, 8, 8), batch_size=16)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_data_as_real_pipelines_hold_it_is_read_or_refused_with_the_way_out():
    from torch.utils.data import Dataset, SubsetRandomSampler

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 10)).eval()
    x, y = images(40)
    run = dict(shots=2, method="quant", bits=8, show_progress=False)
    reference, _ = crossdistill.compress(model, x, labels=y, **run)
    # batch_size=None turns batching off: the loader yields samples, which were joined as batches.
    unbatched, _ = crossdistill.compress(model, DataLoader(TensorDataset(x, y), batch_size=None), **run)
    assert torch.equal(unbatched(x[:4]), reference(x[:4]))
    with pytest.raises(CrossDistillError, match="meta device"):
        crossdistill.compress(model, x.to("meta"), labels=y, **run)

    class OneHot(Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int):
            return x[i], torch.nn.functional.one_hot(y[i], 10)

    with pytest.raises(CrossDistillError, match=r"one-hot rows: give y.argmax\(1\)"):
        crossdistill.compress(model, OneHot(), **run)

    class PreBatched(Dataset):  # a dataset that makes its own batches, read with batch_size=None
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int):
            return x[8 * i:8 * i + 8], y[8 * i:8 * i + 8]

    prebatched, _ = crossdistill.compress(model, DataLoader(PreBatched(), batch_size=None), **run)
    assert torch.equal(prebatched(x[:4]), reference(x[:4]))
    with pytest.raises(CrossDistillError, match=r"one-hot rows: give y.argmax\(1\)"):
        crossdistill.compress(model, x, labels=torch.nn.functional.one_hot(y, 10), **run)
    with pytest.raises(CrossDistillError, match="not names"):
        crossdistill.compress(model, x, labels=[f"class{int(v)}" for v in y], **run)
    with pytest.raises(CrossDistillError, match="these look like batches"):
        crossdistill.compress(model, [(x[:8], y[:8]), (x[8:24], y[8:24]), (x[24:], y[24:])], **run)

    class Hugging(Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int):
            return {"pixel_values": x[i], "labels": y[i]}

    with pytest.raises(CrossDistillError, match=r"\(d\['pixel_values'\], d\['labels'\]\)"):
        crossdistill.compress(model, Hugging(), **run)
    with pytest.raises(CrossDistillError, match=r"channels last, give them N×C×H×W, x.permute\(0, 3, 1, 2\)"):
        crossdistill.compress(model, x, labels=y, eval_data=(x.permute(0, 2, 3, 1), y), **run)
    sampled = DataLoader(TensorDataset(x, y), batch_size=8, sampler=SubsetRandomSampler(range(40)))
    with pytest.warns(UserWarning, match="SubsetRandomSampler orders the samples"):
        crossdistill.compress(model, sampled, **run)


def test_two_factory_files_with_same_named_siblings_each_get_their_own(tmp_path):
    # v2/net.py's `from helper import WIDTH` found v1's helper in sys.modules: a sweep over both
    # models built v2 at v1's width (its weights then "did not fit").
    from crossdistill.models.user import build_user_model

    for version, width in (("v1", 4), ("v2", 6)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "helper.py").write_text(f"WIDTH = {width}\n")
        (tmp_path / version / "net.py").write_text(textwrap.dedent("""
            from torch import nn
            from helper import WIDTH

            def make():
                return nn.Sequential(nn.Conv2d(1, WIDTH, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(WIDTH, 10))
        """))
    sys.modules["helper"] = type(sys)("helper")  # another folder's `helper`, imported earlier
    sys.modules["helper"].WIDTH = 99
    try:
        widths = [build_user_model(f"{tmp_path / v / 'net.py'}:make")[0].out_channels for v in ("v1", "v2", "v1")]
        assert widths == [4, 6, 4]
        assert sys.modules["helper"].WIDTH == 99  # the caller's module of that name is given back
    finally:
        sys.modules.pop("helper", None)
    # What it imports otherwise stays imported, as any import does: a package installed below its
    # folder (a project's .venv) is not imported twice, and a sibling imported inside the
    # function that builds the model is found.
    (tmp_path / "v3" / ".venv" / "site" / "vendored").mkdir(parents=True)
    (tmp_path / "v3" / ".venv" / "site" / "vendored" / "__init__.py").write_text("WIDTH = 5\n")
    (tmp_path / "v3" / "parts").mkdir()
    (tmp_path / "v3" / "parts" / "__init__.py").write_text("")
    (tmp_path / "v3" / "parts" / "head.py").write_text("CLASSES = 10\n")
    (tmp_path / "v3" / "net.py").write_text(textwrap.dedent("""
        import sys
        sys.path.append(__file__.rpartition("/")[0] + "/.venv/site")
        import parts
        from torch import nn
        from vendored import WIDTH

        def make():
            from parts.head import CLASSES
            return nn.Sequential(nn.Conv2d(1, WIDTH, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(WIDTH, CLASSES))
    """))
    try:
        assert build_user_model(f"{tmp_path / 'v3' / 'net.py'}:make")[0].out_channels == 5
        assert "vendored" in sys.modules
    finally:
        for name in ("vendored", "parts", "parts.head"):
            sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if not p.endswith(".venv/site")]


def test_a_submodule_wrapped_by_torch_compile_is_named():
    # It failed as "feeds an unsupported op: NativeBatchNormBackward0" for channels; sparsity
    # returned a student with `_orig_mod.` in its keys, which its factory's model does not fit.
    torch.manual_seed(0)
    model = _frozen_test_net()
    model[3] = torch.compile(model[3])
    with pytest.raises(CrossDistillError, match=r"3 is wrapped by torch.compile: compress the modules it wraps \(3 = 3._orig_mod\)"):
        crossdistill.compress(model, torch.randn(20, 3, 8, 8), n_samples=10, method="sparsity", show_progress=False)


def test_the_report_identifies_teacher_and_few_shot_images_by_content(factory, data, tmp_path):
    """The config names the weights by path: a file changed in place gave another student under
    the same config and report, and nothing told the two runs apart."""
    import json

    from crossdistill.models.user import build_user_model
    from crossdistill.persistence.files import tensors_checksum

    train, _ = data
    teacher = build_user_model(factory)
    torch.save(teacher.state_dict(), tmp_path / "w.pt")

    def run(out: str) -> dict:
        assert main(["compress", "--model", factory, "--weights", str(tmp_path / "w.pt"), "--data", str(train),
                     "--shots", "2", "--method", "quant", "--bits", "8", "--quiet", "--out", str(tmp_path / out)]) == 0
        return json.loads((tmp_path / out / "report.json").read_text())["checksums"]

    first = run("a")
    assert first["teacher"] == tensors_checksum(teacher.state_dict())
    with torch.no_grad():
        next(teacher.parameters()).view(-1)[0] += 1e-3
    torch.save(teacher.state_dict(), tmp_path / "w.pt")
    second = run("b")
    assert second["teacher"] != first["teacher"] and second["fewshot"] == first["fewshot"]
    assert main(["compress", "--model", factory, "--weights", str(tmp_path / "w.pt"), "--data", str(train), "--seed",
                 "1", "--shots", "2", "--method", "quant", "--bits", "8", "--quiet", "--out", str(tmp_path / "c")]) == 0
    third = json.loads((tmp_path / "c" / "report.json").read_text())["checksums"]
    assert third["fewshot"] != second["fewshot"] and third["teacher"] == second["teacher"]  # another draw
    x, y = images()
    _, api = crossdistill.compress(teacher.eval(), x, labels=y, shots=2, method="quant", bits=8, show_progress=False)
    assert api["checksums"]["teacher"] == second["teacher"]


def test_a_teacher_that_scores_no_better_than_guessing_is_pointed_out(factory, data, tmp_path, capsys):
    """Labels numbered otherwise than the model's classes make every figure of the run measure
    nothing; the teacher's own score is what shows it, so it is said in words."""
    import warnings

    from crossdistill.checks import ChanceScoreWarning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(10, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 10)).eval()
    with torch.no_grad():
        for layer in (model[0], model[3]):
            layer.weight.copy_(torch.eye(10).reshape(layer.weight.shape))
            layer.bias.zero_()
    y = torch.arange(200) % 10
    x = torch.randn(200, 10, 4, 4) * 0.1 + nn.functional.one_hot(y, 10).float()[:, :, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChanceScoreWarning)
        _, report = crossdistill.compress(model, x, labels=y, shots=2, method="quant", bits=8, eval_data=(x, y),
                                          show_progress=False)
    assert report["teacher"]["top1"] == 100.0
    shuffled = (y + 3) % 10  # the same images, their classes numbered another way
    with pytest.warns(ChanceScoreWarning, match=r"scores 0.0 % top-1 on the 200 evaluation images, no better than "
                                                  r"guessing among 10 classes \(10.0 %\)"):
        crossdistill.compress(model, x, labels=shuffled, shots=2, method="quant", bits=8, eval_data=(x, shuffled),
                              show_progress=False)
    train, test = data  # random labels for the factory's untrained model: the command line says it too
    assert main(["compress", "--model", factory, "--data", str(train), "--eval-data", str(test), "--shots", "2",
                 "--method", "quant", "--bits", "8", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert "no better than guessing among 10 classes" in capsys.readouterr().err


def test_a_model_that_normalises_by_its_batch_is_pointed_out_and_the_eval_batch_recorded():
    from crossdistill.checks import BatchStatisticsWarning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 4
    with pytest.warns(BatchStatisticsWarning, match=r"1 BatchNorm of the model \(1\) keeps no running"):
        _, report = crossdistill.compress(model, x, labels=y, shots=2, method="quant", bits=8, eval_data=(x, y),
                                          show_progress=False)
    assert report["eval_batch"] == 64


def test_a_regressor_read_as_a_binary_classifier_is_pointed_out():
    """One output is read as a binary logit: a regressor whose values are all positive, scored
    against labels of 0, is 'right' nowhere, and the warning names the setting for regressors."""
    from crossdistill.checks import ChanceScoreWarning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(8, 1), nn.Softplus()).eval()
    x, y = torch.randn(60, 2, 16), torch.zeros(60, dtype=torch.long)
    with pytest.warns(ChanceScoreWarning, match=r"scores 0.0 % top-1 on the 60 evaluation images, no better than "
                                                  r"guessing among 2 classes .*read as one binary logit.*"
                                                  r"output_kind 'values'"):
        crossdistill.compress(model, x, n_samples=20, method="quant", bits=8, eval_data=(x, y), show_progress=False)


def test_each_output_has_its_own_error_and_one_lost_beside_large_logits_is_pointed_out():
    """A small regression head beside large class logits weighs nothing in the pooled error."""
    import warnings

    from crossdistill.checks import FarFromTeacherWarning, warn_far_from_teacher
    from crossdistill.evaluation_agreement import Agreement

    logits, head = torch.randn(8, 10) * 30, torch.randn(8, 2)
    counts = Agreement(None, "classes")
    counts.add({"logits": logits, "reg": head}, {"logits": logits * 1.01, "reg": torch.zeros(8, 2)}, 8)
    result = counts.result()
    assert result["output_errors"]["0"] == pytest.approx(1e-4)
    assert result["output_errors"]["1"] == pytest.approx(1.0)
    assert result["output_error"] < 0.01
    with pytest.warns(FarFromTeacherWarning, match=r"no closer to the teacher's than zeros would be on the 8 "
                                                    r"evaluation samples \(relative output error output 1: 1\b"):
        warn_far_from_teacher(result, 8)
    single = Agreement(None, "classes")
    single.add(logits, logits * 0.5, 8)
    assert "output_errors" not in single.result()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FarFromTeacherWarning)
        warn_far_from_teacher(single.result(), 8)  # 0.25: an approximation, nothing said
    single.add(logits, -logits, 8)  # now (0.25 + 4) / 2
    with pytest.warns(FarFromTeacherWarning, match=r"error 2.12"):
        warn_far_from_teacher(single.result())


def test_shape_advice_follows_the_first_convs_dimensions_and_feature_rows_are_sent_to_the_api():
    import numpy as np

    from crossdistill.data.arrays import ImageArrays
    from crossdistill.models.user import infer_info

    signal_net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(CrossDistillError, match=r"give a batch \(N, C, L\), one signal x as x.unsqueeze\(0\); on the "
                                                r"command line uint8 arrays are images"):
        infer_info(signal_net, "net", (1, 2, 16))
    with pytest.raises(CrossDistillError, match=r"rows of features \(N, F\) are read by the Python API only"):
        ImageArrays(x=np.zeros((10, 6), np.float32), y=np.zeros(10, np.int64), num_classes=2)


def test_a_factory_that_wraps_its_model_is_unwrapped_on_the_command_line_and_at_load(tmp_path, data):
    """A factory returning DataParallel(model) could not load a plain state dict nor one with
    'module.' keys (the message told a command-line user to load into model.module)."""
    from crossdistill.models.user import build_user_model

    path = tmp_path / "wrapped.py"
    path.write_text(FACTORY + textwrap.dedent("""
        def make_dp():
            return nn.DataParallel(make())
    """))
    plain = build_user_model(f"{path}:make")
    wrapped = build_user_model(f"{path}:make_dp")
    assert type(wrapped) is type(plain) and wrapped.crossdistill_factory == f"{path}:make_dp"
    train, test = data
    weights = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(plain).state_dict(), weights)  # keys 'module.0.weight', ...
    out = tmp_path / "run"
    assert main(["compress", "--model", f"{path}:make_dp", "--weights", str(weights), "--data", str(train),
                 "--eval-data", str(test), "--shots", "2", "--method", "quant", "--bits", "8", "--quiet",
                 "--mean", "0.3", "--std", "0.25", "--out", str(out)]) == 0
    student = crossdistill.load(out / "student.safetensors")
    assert type(student) is type(plain)


def test_a_model_compiled_in_place_runs_eager_and_keeps_its_compiled_forward():
    """model.compile() recompiled at every forward a hook changed (121 s against 6 s)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    calls = []

    def compiled(*args, **kwargs):
        calls.append(1)
        return model._call_impl(*args, **kwargs)

    model._compiled_call_impl = compiled  # what Module.compile() sets
    x, y = torch.randn(24, 3, 8, 8), torch.arange(24) % 4
    student, _ = crossdistill.compress(model, x, labels=y, shots=3, method="quant", bits=8, show_progress=False)
    assert calls == []
    assert model._compiled_call_impl is compiled and student._compiled_call_impl is None


def test_half_precision_registered_models_and_torch_export_programs_are_refused_in_one_line():
    from crossdistill.models import create_model

    x, y = torch.randn(20, 3, 32, 32), torch.arange(20) % 10
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(CrossDistillError, match=rf"its parameters are {str(dtype)[6:]}; compress a float32 copy"):
            crossdistill.compress(create_model("resnet20").to(dtype), x, labels=y, shots=2, show_progress=False)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    net(x[:2])
    program = torch.export.export(net.eval(), (x[:2],))
    with pytest.raises(CrossDistillError, match="got ExportedProgram: compress the nn.Module it was exported from"):
        crossdistill.compress(program, x, labels=y, shots=2, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"comes from torch.export \(ExportedProgram.module\(\)\)"):
        crossdistill.compress(program.module(), x, labels=y, shots=2, show_progress=False)


def test_a_factory_that_cannot_rebuild_the_model_is_refused_at_save_and_nothing_is_written(tmp_path):
    """A factory building another model than the student's failed only at load, long after."""
    from crossdistill.models.user import build_user_model

    path = tmp_path / "nets.py"
    path.write_text(FACTORY + textwrap.dedent("""
        def make_half():
            return make().half()

        def make_wider():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 9, 3, padding=1), nn.Flatten(), nn.Linear(9 * 28 * 28, 10))
    """))
    x, y = images()
    model, _ = crossdistill.compress(build_user_model(f"{path}:make").eval(), x, labels=y, shots=2, keep=0.5,
                                     show_progress=False)
    out = tmp_path / "student.safetensors"
    out.write_bytes(b"an earlier file")
    for bad in ("make_half", "make_wider"):
        with pytest.raises(CrossDistillError, match=rf"student.safetensors not written: the factory '.*:{bad}' cannot "
                                                    r"rebuild this model from it \(.*student.safetensors"):
            crossdistill.save(model, out, factory=f"{path}:{bad}")
        assert out.read_bytes() == b"an earlier file"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    crossdistill.save(model, out, factory=f"{path}:make")
    with torch.no_grad():
        assert torch.equal(crossdistill.load(out).eval()(x), model.eval()(x))


def test_without_evaluation_data_the_report_still_gives_both_models_sizes(factory, data, tmp_path, capsys):
    import json

    from crossdistill.models.user import build_user_model

    train, _ = data
    weights = tmp_path / "teacher.pt"
    torch.save(build_user_model(factory).state_dict(), weights)
    out = tmp_path / "run"
    assert main(["compress", "--model", factory, "--weights", str(weights), "--data", str(train), "--shots", "2",
                 "--flops", "0.5", "--mean", "0.3", "--std", "0.25", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    t, s = report["teacher"], report["student"]
    assert s["params"] < t["params"] and s["flops"] <= 0.5 * t["flops"] and "top1" not in s
    printed = capsys.readouterr().out
    assert f"{t['params']:,}" in printed and f"{s['params']:,}" in printed and "top-1" not in printed


def test_labels_a_classifier_cannot_have_point_to_output_kind_values():
    """A count regressor (one output, read as a binary logit) given its counts as labels was told
    the model 'has 2 outputs'; multi-hot rows were refused without a word on multi-label models."""
    torch.manual_seed(0)
    counter = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(1)).eval()
    x = torch.randn(30, 1, 8, 8)
    counter(x[:2])
    with pytest.raises(CrossDistillError, match=r"label 9 is not a class of the model, which has one output, read as a "
                                                r"binary classifier's logit .*output_kind 'values' and n_samples"):
        crossdistill.compress(counter, x, labels=torch.arange(30) % 10, shots=2, show_progress=False)
    tagger = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    tagger(x[:2])
    multi_hot = (torch.rand(30, 5) > 0.5).long()
    with pytest.raises(CrossDistillError, match=r"several labels per sample \(multi-label\) .*output_kind 'values'"):
        crossdistill.compress(tagger, x, n_samples=10, method="quant", bits=8, eval_data=(x, multi_hot),
                              show_progress=False)


def test_saving_with_a_factory_leaves_the_callers_random_state_as_it_was(tmp_path):
    from crossdistill.models.user import build_user_model

    path = tmp_path / "nets.py"
    path.write_text(FACTORY.replace("torch.manual_seed(0)\n", ""))
    x, y = images()
    student, _ = crossdistill.compress(build_user_model(f"{path}:make").eval(), x, labels=y, shots=2, method="quant",
                                       bits=8, show_progress=False)
    torch.manual_seed(123)
    crossdistill.save(student, tmp_path / "s.safetensors", factory=f"{path}:make")
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))
