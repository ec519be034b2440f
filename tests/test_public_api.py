"""The public API as a typed code base and a notebook meet it: what type checkers see of the
lazy names, numpy scalars where numbers go, arguments checked by their own names, and
`export_model` / `save` / `load` taking what their docstrings say without touching the caller's
model."""
from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import crossdistill
from crossdistill import CrossDistillError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.b1(self.c1(x))))).mean((2, 3)))


def _data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


QUICK = dict(finetune_epochs=0, latency=False, show_progress=False)


def test_type_checkers_see_every_lazy_name_as_the_object_it_is():
    # The names come from a module __getattr__; without imports under TYPE_CHECKING a type
    # checker sees each one as Any (no signature, misspellings unreported).
    tree = ast.parse(Path(crossdistill.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    imported = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            imported[alias.asname or alias.name] = node.module
    lazy = set(crossdistill.__all__) - {"CrossDistillError", "__version__"}
    assert set(imported) == lazy
    import importlib

    for name, module in imported.items():
        assert getattr(importlib.import_module(module), name) is getattr(crossdistill, name), name
    assert "importlib" not in dir(crossdistill)
    # A module-level __getattr__ visible to them makes every attribute valid (crossdistill.compresss
    # passed): it is defined only outside type checking.
    assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)
    hidden = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test).startswith("not ")
              and "TYPE_CHECKING" in ast.unparse(n.test)]
    assert any(isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for n in hidden for f in n.body)


def test_numpy_scalars_are_numbers_like_any_other():
    x, y = _data()
    plain, rep_plain = crossdistill.compress(_net(), x, labels=y, shots=3, seed=1, keep=0.5, **QUICK)
    numpy, rep_numpy = crossdistill.compress(_net(), x, labels=list(y.numpy()), shots=np.int64(3),
                                             seed=np.int64(1), keep=np.float32(0.5), **QUICK)
    assert rep_numpy["fewshot_indices"] == rep_plain["fewshot_indices"]
    for a, b in zip(plain.state_dict().values(), numpy.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("value", [-3, 0, 2.5, "4"])
def test_a_bad_n_samples_without_labels_is_named(value):
    x, _ = _data()
    with pytest.raises(CrossDistillError, match="n_samples"):
        crossdistill.compress(_net(), x, n_samples=value, **QUICK)


def test_too_many_samples_is_told_by_the_argument_name():
    x, y = _data()
    with pytest.raises(CrossDistillError, match=r"n_samples=1000 is larger than the data set \(24 images\)"):
        crossdistill.compress(_net(), x, labels=y, n_samples=1000, **QUICK)


def test_a_dataset_of_inputs_alone_is_unlabelled_data():
    x, _ = _data()
    student, report = crossdistill.compress(_net(), torch.utils.data.TensorDataset(x), n_samples=10, **QUICK)
    assert len(report["fewshot_indices"]) == 10


def test_explicit_keep_beside_a_flops_target_is_refused_even_at_its_default():
    x, y = _data()
    with pytest.raises(CrossDistillError, match="give one of keep=, flops=, parameters=, not keep= and flops="):
        crossdistill.compress(_net(), x, labels=y, shots=2, keep=0.5, flops=0.5, **QUICK)


def test_torch_default_dtype_of_float64_does_not_reach_the_models_inputs():
    x, y, model = *_data(), _net()  # a float32 model, made before the default changed
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        student, report = crossdistill.compress(model, x, labels=y, shots=2, **QUICK)
    finally:
        torch.set_default_dtype(before)
    assert report["student"]["flops"] < report["teacher"]["flops"]


def test_a_torch_device_is_a_device_name():
    x, y = _data()
    _, report = crossdistill.compress(_net(), x, labels=y, shots=2, device=torch.device("cpu"), **QUICK)
    assert report["student"]["flops"] < report["teacher"]["flops"]


def test_show_progress_must_be_a_bool():
    x, y = _data()
    with pytest.raises(CrossDistillError, match="show_progress must be True or False"):
        crossdistill.compress(_net(), x, labels=y, shots=2, show_progress="no", finetune_epochs=0)


def test_bad_eval_data_is_named_as_eval_data():
    x, y = _data()
    with pytest.raises(CrossDistillError, match="^eval_data must be"):
        crossdistill.compress(_net(), x, labels=y, shots=2, eval_data=3, **QUICK)


def test_stacked_inputs_refuses_one_string_of_names():
    with pytest.raises(CrossDistillError, match="names must be a sequence"):
        crossdistill.StackedInputs(_net(), names="ab")


def test_export_model_leaves_the_callers_modes_and_takes_arrays(tmp_path):
    model = _net().train()
    model.b1.eval()  # a mixed state, as a caller may keep it
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8))  # float64 numpy, as a notebook holds it
    result = crossdistill.export_model(model, tmp_path / "m.torchscript.pt", "TorchScript", x)
    assert result.max_abs_diff <= 1e-5 and (tmp_path / "m.torchscript.pt").is_file()
    assert model.training and not model.b1.training and model.c1.training


def test_export_model_refuses_what_it_cannot_export_by_name(tmp_path):
    model, x = _net(), torch.randn(2, 3, 8, 8)
    with pytest.raises(CrossDistillError, match="model must be a torch.nn.Module"):
        crossdistill.export_model("m", tmp_path / "a.onnx", "onnx", x)
    with pytest.raises(CrossDistillError, match="suffix of the onnx format.*name it b.torchscript.pt"):
        crossdistill.export_model(model, tmp_path / "b.onnx", "torchscript", x)
    with pytest.raises(CrossDistillError, match="suffix of the torchscript format.*name it b.onnx"):
        crossdistill.export_model(model, tmp_path / "b.torchscript.pt", "onnx", x)
    with pytest.raises(CrossDistillError, match=r"does not run on the verification inputs \(\(2, 5, 8, 8\)"):
        crossdistill.export_model(model, tmp_path / "c.torchscript.pt", "torchscript", torch.randn(2, 5, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_save_takes_the_factory_as_an_argument(tmp_path):
    source = tmp_path / "mynet.py"
    source.write_text("import torch\nfrom torch import nn\n\n\n" + textwrap.dedent(inspect.getsource(Net)) +
                      "\n\ndef make():\n    torch.manual_seed(0)\n    return Net().eval()\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("mynet_for_save", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.make()  # imported as a user does: nothing says how to rebuild it
    x, y = _data()
    student, _ = crossdistill.compress(model, x, labels=y, shots=2, **QUICK)
    assert not hasattr(student, "crossdistill_factory")
    with pytest.raises(CrossDistillError, match="save\\(model, path, factory="):
        crossdistill.save(student, tmp_path / "s.safetensors")
    with pytest.raises(CrossDistillError, match="factory must be 'path/to/file.py:function'"):
        crossdistill.save(student, tmp_path / "s.safetensors", factory="mynet.py")
    crossdistill.save(student, tmp_path / "s.safetensors", factory=f"{source}:make")
    loaded = crossdistill.load(tmp_path / "s.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))


def test_load_refuses_a_path_that_is_no_path():
    with pytest.raises(CrossDistillError, match="must be a str or a Path, got int"):
        crossdistill.load(3)


def test_save_under_a_file_names_that_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CrossDistillError, match="afile is a file, not a folder"):
        crossdistill.save(_net(), tmp_path / "afile" / "s.safetensors")


def test_a_report_names_the_cpu_kernels_it_was_made_with():
    # Results that amplify rounding (a trained teacher, 2-bit GPTQ) differ between AVX-512, AVX2
    # and plain kernels; without this a stored row could not say which it came from.
    x, y = _data()
    _, report = crossdistill.compress(_net(), x, labels=y, shots=2, **QUICK)
    assert report["versions"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()


def test_a_float32_numpy_setting_is_its_decimal_value():
    from crossdistill.config import CompressConfig

    assert CompressConfig(model="m", shots=1, keep=np.float32(0.3)).validate().method.params["keep"] == 0.3


def test_show_progress_takes_what_python_reads_as_a_bool():
    x, y = _data()
    for flag in (0, np.bool_(False)):
        crossdistill.compress(_net(), x, labels=y, shots=2, show_progress=flag, finetune_epochs=0, latency=False)


def _fashion(seed: int = 0):
    from crossdistill.models import create_model

    torch.manual_seed(seed)
    model = create_model("fashion_cnn").eval()
    g = torch.Generator().manual_seed(seed)
    return model, torch.randn(30, 1, 28, 28, generator=g), torch.arange(30) % 10


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def test_a_sparse_student_trained_in_ones_own_loop_is_named_at_save(tmp_path):
    # Plain SGD filled the pruned weights in and save said nothing: the file was dense, its masks stale.
    from crossdistill.compression.weight_sparsity import apply_masks, get_masks

    model, x, y = _fashion()
    student, _ = crossdistill.compress(model, x, labels=y, shots=2, method="sparsity", sparsity=0.7, **QUICK)
    _train(student, x, y)
    with pytest.warns(UserWarning, match="non-zero where the sparsity masks prune them"):
        crossdistill.save(student, tmp_path / "trained.safetensors")
    assert apply_masks(student) > 0
    assert all(bool((student.get_submodule(n).weight[~m] == 0).all()) for n, m in get_masks(student).items())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crossdistill.save(student, tmp_path / "sparse.safetensors")
    with torch.no_grad():
        assert torch.equal(crossdistill.load(tmp_path / "sparse.safetensors")(x), student(x))


def test_a_quantized_student_compressed_again_saves_and_says_what_it_is(tmp_path):
    # Its quantization record stayed on the new student, whose weights were then off the grid:
    # save refused it as "changed after quantization".
    model, x, y = _fashion()
    q, _ = crossdistill.compress(model, x, labels=y, shots=2, method="quant", bits=4, **QUICK)
    with pytest.warns(UserWarning, match="the model is quantized .* sparsity student is not quantized"):
        s, _ = crossdistill.compress(q, x, labels=y, shots=2, method="sparsity", sparsity=0.5, **QUICK)
    assert not getattr(s, "crossdistill_quant", None) and q.crossdistill_quant
    crossdistill.save(s, tmp_path / "s.safetensors")
    with torch.no_grad():
        assert torch.equal(crossdistill.load(tmp_path / "s.safetensors")(x), s(x))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quantized again: nothing to say
        q2, _ = crossdistill.compress(q, x, labels=y, shots=2, method="quant", bits=4, **QUICK)
    crossdistill.save(q2, tmp_path / "q2.safetensors")


@pytest.mark.parametrize("wrap", [torch.nn.DataParallel, torch.compile])
def test_a_wrapped_student_saves_as_the_model_inside(tmp_path, wrap):
    # torch.compile's keys (_orig_mod.) made a file load refused; DataParallel was refused as a class.
    model, x, y = _fashion()
    student, _ = crossdistill.compress(model, x, labels=y, shots=2, **QUICK)
    crossdistill.save(wrap(student), tmp_path / "w.safetensors")
    with torch.no_grad():
        assert torch.equal(crossdistill.load(tmp_path / "w.safetensors")(x), student(x))


def test_a_trained_quantized_student_is_told_how_to_keep_its_training(tmp_path):
    model, x, y = _fashion()
    q, _ = crossdistill.compress(model, x, labels=y, shots=2, method="quant", bits=4, **QUICK)
    _train(q, x, y)
    with pytest.raises(CrossDistillError, match="del model.crossdistill_quant.*quantize it again"):
        crossdistill.save(q, tmp_path / "q.safetensors")


def test_apply_masks_reaches_attention_projections_and_wrapped_models():
    # q/k/v of an nn.MultiheadAttention are stand-ins, not submodules (get_submodule failed there,
    # half the layers already zeroed); a DataParallel-wrapped model was silently left as it was.
    from crossdistill.compression.weight_sparsity import apply_masks, get_masks

    class Att(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Linear(6, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            h = self.emb(x)
            return self.fc(self.attn(h, h, h, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    x, y = torch.randn(24, 5, 6), torch.arange(24) % 4
    student, _ = crossdistill.compress(Att().eval(), x, labels=y, shots=3, method="sparsity", sparsity=0.6, **QUICK)
    masks = get_masks(student)
    assert any(".q_proj" in n or "proj" in n for n in masks)
    _train(student, x.reshape(24, 5, 6), y)
    assert apply_masks(torch.nn.DataParallel(student)) > 0
    from crossdistill.capture import get_module

    for name, mask in masks.items():
        assert bool((get_module(student, name).weight[~mask] == 0).all()), name
    student.fc = nn.Linear(16, 3)  # a layer changed after it was made sparse
    student.crossdistill_masks["fc"] = torch.ones(4, 16, dtype=torch.bool)
    with pytest.raises(CrossDistillError, match="sparsity mask of 'fc' has shape"):
        apply_masks(student)


@pytest.mark.parametrize("module", ["crossdistill.compressed_layers", "crossdistill.hints",
                                    "crossdistill.compression.budget_output", "crossdistill.layer_lookup"])
def test_a_module_imports_first_in_a_fresh_interpreter(module):
    """Imported before anything else of the package (a user's `from crossdistill.hints import ...`),
    a module must not meet its own half-initialised import through a cycle."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
