"""Export a (compressed) model to ONNX or TorchScript, verified before it is written.

The exported file is checked against the PyTorch model it came from: both run the same inputs
(real test images when given, else a fixed random batch) and the largest absolute difference of
their logits must stay within a tolerance; only then is the file moved into place. Export and
verification use a different batch size, so a file that hard-coded the batch would fail here
rather than in deployment.

What is exported is the model as it runs: a slimmed model has fewer channels in the graph, a
low-rank one has its two factor layers, and quantized or sparse weights appear as their float
(dequantised / zero-filled) values.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from crossdistill.checks import model_copy
from crossdistill.errors import CrossDistillError
from crossdistill.model_inputs import example, for_model, parameter_dtypes
from crossdistill.model_outputs import dataclass_fields, flat, is_dataclass_instance
from crossdistill.outputs import DISK_ERRNOS
from crossdistill.persistence.files import remove_dead_siblings, temp_sibling
from crossdistill.train_flags import eval_mode

__all__ = ["FORMATS", "DeployInfo", "ExportResult", "deploy_info", "export", "export_model", "default_output",
           "verification_inputs", "max_abs_diff"]

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_TOLERANCE = 1e-4
# A model saved in half precision (persistence's `dtype`) rounds each op to ~1e-3 (float16) or
# ~1e-2 (bfloat16) relative, and onnxruntime orders and fuses its sums unlike PyTorch: a faithful
# float16 ResNet-20 export differs by 2e-3 of its largest logit, twenty times float32's tolerance.
DTYPE_TOLERANCES = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
DEFAULT_OPSET = 17
_TRACE_BATCH = 2  # batch used to record the graph; verification uses another size on purpose


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    n_inputs: int
    inputs: str  # where the verification inputs came from
    bytes: int
    # ONNX axes left free besides the batch ('length', or 'height' and 'width'), checked at a
    # second size; empty when the model takes its input size only.
    free_axes: tuple[str, ...] = ()
    note: str = ""  # how the file's outputs differ from the model's, when they do
    tolerance: float = DEFAULT_TOLERANCE  # the one the check used (default_tolerance unless given)


def default_tolerance(model: nn.Module) -> float:
    """DEFAULT_TOLERANCE, or a half-precision model's own (DTYPE_TOLERANCES)."""
    # The coarsest dtype among the parameters sets how far rounding can move the logits.
    return max((DTYPE_TOLERANCES.get(d, DEFAULT_TOLERANCE) for d in parameter_dtypes(model)), default=DEFAULT_TOLERANCE)


def check_format(fmt: str) -> str:
    """`fmt` as FORMATS names it (case aside: 'ONNX' is 'onnx')."""
    name = fmt.lower() if isinstance(fmt, str) else fmt
    if name not in FORMATS:
        raise CrossDistillError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return name


def default_output(source: str | Path, fmt: str) -> Path:
    """Beside the source: `RUN/student.onnx` for a run directory, `x.onnx` for `x.safetensors`."""
    source = Path(source)
    suffix = SUFFIXES[check_format(fmt)]
    if source.is_dir():
        return source / f"student{suffix}"
    name = source.name
    for ext in (".safetensors", ".pth", ".pt", ".th", ".ckpt", ".bin", ".tar"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return source.with_name(name + suffix)


@dataclass(frozen=True)
class DeployInfo:
    """What a deployer must know about the model's input: its name, shape (without the batch)
    and the normalisation its pixels need."""

    model: str
    input_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_dtype: str = "float32"  # "int64": token ids


def deploy_info(model: nn.Module) -> DeployInfo:
    """From the registry for a registered model; from the saved document for a user's model
    loaded by crossdistill.load; from the compression run for one just compressed."""
    from crossdistill.models.user import info_of

    try:
        info = info_of(model)
    except CrossDistillError as exc:
        raise CrossDistillError(f"cannot export {exc}") from None
    name = getattr(model, "crossdistill_factory", None) if info.family == "user" else info.name
    return DeployInfo(name or info.name, tuple(info.input_size), tuple(info.mean), tuple(info.std), info.input_dtype)


def _metadata(model: nn.Module) -> dict[str, str]:
    from crossdistill._version import __version__

    meta = {"crossdistill_version": __version__}
    try:
        info = deploy_info(model)
    except CrossDistillError:
        return meta
    meta.update({
        "model": info.model,
        "input_size": json.dumps(list(info.input_size)),
        # Deployers must feed (pixels / 255 - mean) / std, NCHW float32 (images); absent for a
        # student compressed from tensors normalised by its user.
        **({"mean": json.dumps(list(info.mean)), "std": json.dumps(list(info.std))} if info.mean else {}),
        **({"input_dtype": info.input_dtype} if info.input_dtype != "float32" else {}),
    })
    if hasattr(model, "spec"):
        meta["spec"] = json.dumps(model.spec())  # type: ignore[operator]
    from crossdistill.model_inputs import StackedInputs

    if isinstance(model, StackedInputs):
        # The graph has one input, the stack: a deployer must know what goes where in it.
        meta["stacked_inputs"] = json.dumps({"dim": 1, "names": list(model.names) if model.names else None,
                                             "count": int(info.input_size[0])})
    return meta


def verification_inputs(
    model: nn.Module, eval_data: str | Path | None = None, n: int = 64, seed: int = 0
) -> tuple[torch.Tensor, str]:
    """Normalised inputs for verification (NCHW for images) and a description of where they came from."""
    if n < 1:
        raise CrossDistillError(f"the number of verification inputs must be >= 1, got {n}")
    info = deploy_info(model)
    if eval_data is None:
        gen = torch.Generator().manual_seed(seed)
        # Normalised images are roughly standard normal, so this exercises the same value range
        # (token ids: drawn from the model's vocabulary).
        batch = example(info.input_size, n, info.input_dtype, model=model, random=True, generator=gen)
        return batch, f"a fixed random batch of {n} (seed {seed})"
    from crossdistill.checks import check_input_shape
    from crossdistill.data import load_image_data, to_tensor

    data = load_image_data(eval_data, "test")
    check_input_shape(data, info.input_size, info.model, str(eval_data))
    if not info.mean:
        raise CrossDistillError("this student was compressed from tensors, so its file does not know how pixels are "
                                "normalised for it: verify on the fixed random batch (leave --eval-data out), or "
                                "export from Python with your own normalised inputs (crossdistill.export_model)")
    k = min(n, len(data))
    kind = "signals" if data.is_signal else "images"
    return for_model(model, to_tensor(data.x[:k], info.mean, info.std)), f"the first {k} test {kind} of {eval_data}"


def _as_list(x: Any) -> list[torch.Tensor]:
    """A model's outputs as flat tensors: onnxruntime's (a list of arrays) as they come, PyTorch's
    (any structure) in model_outputs.flat order, the order of the exported graph's outputs."""
    if isinstance(x, np.ndarray):
        return [torch.from_numpy(x)]
    if isinstance(x, list) and x and all(isinstance(v, np.ndarray) for v in x):
        return [torch.from_numpy(v) for v in x]
    return flat(x)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest |a − b| over every output, outputs matched in order."""
    a_list, b_list = _as_list(a), _as_list(b)
    if len(a_list) != len(b_list):
        raise CrossDistillError(f"exported model returns {len(b_list)} outputs, PyTorch {len(a_list)}")
    worst = 0.0
    for x, y in zip(a_list, b_list):
        x, y = x.float(), y.float()
        if x.shape != y.shape:
            raise CrossDistillError(f"exported model returns shape {tuple(y.shape)}, PyTorch {tuple(x.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise CrossDistillError("the exported model returns non-finite logits")
        worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
    return worst


def _largest(out: Any) -> float:
    return max((float(t.abs().max()) for t in flat(out) if t.numel()), default=0.0)


def output_names(out: Any) -> list[str]:
    """Names of the exported graph's outputs: 'logits' for a model returning one tensor, else a
    dict's keys and tuple positions ('aux', 'output1', 'out.logits'), in model_outputs.flat order."""
    if isinstance(out, torch.Tensor):
        return ["logits"]

    def walk(x: Any, path: str) -> list[str]:
        if isinstance(x, torch.Tensor):
            return [path]
        if isinstance(x, (list, tuple)):
            return [n for i, v in enumerate(x) for n in walk(v, f"{path}.{i}" if path else f"output{i}")]
        if isinstance(x, Mapping) or is_dataclass_instance(x):
            items = x.items() if isinstance(x, Mapping) else dataclass_fields(x).items()
            return [n for k, v in items for n in walk(v, f"{path}.{k}" if path else str(k))]
        return []

    return walk(out, "")


_AXIS_NAMES = {3: ("length",), 4: ("height", "width"), 5: ("depth", "height", "width")}


def size_axes(inputs: torch.Tensor) -> tuple[str, ...]:
    """The input's size axes after batch and channels: a signal's length, an image's height and
    width, a volume's or a clip's depth, height and width, a sequence of token ids' length (N×L, no
    channel axis)."""
    if not inputs.is_floating_point():
        return ("length",) if inputs.dim() == 2 else ()
    return _AXIS_NAMES.get(inputs.dim(), ())


def _resized(model: nn.Module, inputs: torch.Tensor, expected: torch.Tensor) -> torch.Tensor | None:
    """The first inputs at 1.5x their length (signals) or height and width (images), when the
    model takes that size too and returns outputs of the same rank (logits after an adaptive
    pooling, or maps or sequences of the new size); else None. Only then does an ONNX file get
    free size axes (kept when the file gives PyTorch's outputs at that size too)."""
    if not size_axes(inputs):
        return None
    n = min(len(inputs), _TRACE_BATCH)
    if not inputs.is_floating_point():
        # Token ids: the same sentences, longer (random ids could fall outside the vocabulary).
        length = max(2, round(inputs.shape[1] * 1.5))
        other = inputs[:n].repeat(1, 2)[:, :length]
        shape: tuple[int, ...] = tuple(other.shape)
    else:
        shape = (n, inputs.shape[1], *(max(2, round(s * 1.5)) for s in inputs.shape[2:]))
        other = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=inputs.dtype).to(inputs.device)
    try:
        with torch.no_grad():
            out = model(other)
    except Exception:  # noqa: BLE001 - any failure: the model takes its own size only
        return None
    got, want = flat(out), flat(expected)
    if len(got) != len(want) or any(g.dim() != w.dim() or g.shape[:1] != (shape[0],) for g, w in zip(got, want)):
        return None
    return other


def _output_axes(names: list[str], at_size: Any, at_other: Any) -> dict[str, dict[int, str]]:
    """Each output's free axes: the batch, and the dims that changed with the input's size."""
    axes = {}
    for name, a, b in zip(names, flat(at_size), flat(at_other)):
        changed = {d: f"{name}_{d}" for d in range(1, a.dim()) if a.shape[d] != b.shape[d]}
        axes[name] = {0: "batch", **changed}
    return axes


@contextlib.contextmanager
def _exporter_log_silenced() -> Iterator[None]:
    """torch's TorchScript ONNX exporter switches its C++ log on for every export (its check
    tests the function `_jit_is_onnx_log_enabled`, which is always true, not its result) and then
    prints the whole IR graph to stdout when a pass fails, even one this module catches and
    retries with fixed sizes. Its failures arrive as exceptions; stdout's descriptor goes to a
    sink meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                torch._C._jit_set_onnx_log_enabled(False)
    finally:
        os.close(saved)


def _export_onnx(model: nn.Module, example: torch.Tensor, tmp: str, opset: int, free: tuple[str, ...] = (),
                 out_axes: dict[str, dict[int, str]] | None = None) -> None:
    import onnx

    with torch.no_grad():
        out = model(example)
    names = output_names(out)
    out_axes = out_axes or {n: {0: "batch"} for n in names}
    first = 2 if example.is_floating_point() else 1  # token ids (N×L) have no channel axis
    # The exporter takes tensors, tuples, lists and dicts: a dataclass's fields go out as the
    # graph's outputs in their order, each named by its field. The wrapper takes the model's
    # mode: built in training mode, it made the exporter write the BatchNorms as training ones.
    exported = _FlatOutputs(model).train(model.training) if is_dataclass_instance(out) else model

    with warnings.catch_warnings(), _exporter_log_silenced():
        # The TorchScript-based exporter (dynamo=False) works offline and needs no onnxscript;
        # torch announces its deprecation on every call, which is noise for our users.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exported, (example,), tmp, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=names,
            dynamic_axes={"input": {0: "batch", **{first + i: n for i, n in enumerate(free)}}, **out_axes},
            do_constant_folding=True,
        )
    proto = onnx.load(tmp)
    for k, v in _metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"crossdistill.{k}", v
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp)


def _explicit_padding(model: nn.Module) -> nn.Module:
    """The model with every conv's padding='same'/'valid' written as numbers where that is the
    same padding on both sides: exported as plain pads, not ONNX's auto_pad, which onnxruntime
    refuses together with dilation. A copy, only when there is such a conv."""
    from crossdistill.capture import CONVS, pad_arg, spatial_padding

    convs = [n for n, m in model.named_modules() if isinstance(m, CONVS) and isinstance(m.padding, str)]
    if not convs:
        return model
    model = model_copy(model)
    for name in convs:
        conv = model.get_submodule(name)
        pads = spatial_padding(conv)
        if all(lo == hi for lo, hi in pads):
            conv.padding = tuple(lo for lo, _ in pads)
        else:
            # Uneven ('same' with an even effective kernel): an explicit pad before the conv.
            conv.padding = (0,) * len(pads)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    _PaddedConv(conv, tuple(pad_arg(pads))))
    return model


class _PaddedConv(nn.Module):
    """A conv after an explicit zero pad of its input: what an uneven padding='same' computes."""

    def __init__(self, conv: nn.Module, pads: tuple[int, ...]) -> None:
        super().__init__()
        self.conv, self.pads = conv, pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.pad(x, self.pads))


def _run_onnx(path: str, inputs: torch.Tensor) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # failures come back as exceptions; its own log lines are noise here
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": inputs.numpy()})


class _FlatOutputs(nn.Module):
    """The model with its outputs as one flat tuple (model_outputs.flat order)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flat(self.model(x)))


def _export_torchscript(model: nn.Module, example: torch.Tensor, tmp: str) -> str:
    """Trace `model` into `tmp`; returns a note when its outputs had to be flattened."""
    meta = _metadata(model)
    note = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still the TorchScript path
        try:
            # strict=False: a model returning a dict or list of outputs traces too.
            traced = torch.jit.trace(model, example, check_trace=False, strict=False)
        except RuntimeError:
            # A dict whose values are not all tensors (a Hugging Face output with a tuple of
            # hidden states) has no TorchScript type: the file returns the outputs as one tuple.
            with torch.no_grad():
                names = output_names(model(example))
            try:
                traced = torch.jit.trace(_FlatOutputs(model), example, check_trace=False)
            except Exception as exc:  # noqa: BLE001 - the tracer's own errors
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise CrossDistillError(f"TorchScript cannot trace this model ({type(exc).__name__}: {first}); "
                                        "nothing was written; --format onnx may take it") from None
            note = f"outputs flattened to a tuple in this order: {', '.join(names)}"
            meta["outputs"] = json.dumps(names)
        # Into memory, then written by Python: torch's own file writer aborts the whole process
        # (a C++ exception in a destructor) when the disk fills, where this raises OSError.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"crossdistill.json": json.dumps(meta)})
    Path(tmp).write_bytes(buffer.getvalue())
    return note


def _run_torchscript(path: str, inputs: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        return loaded(inputs)


def export_model(
    model: nn.Module,
    out: str | Path,
    fmt: str,
    inputs: torch.Tensor,
    *,
    tolerance: float | None = None,
    force: bool = False,
    opset: int = DEFAULT_OPSET,
    inputs_label: str = "given inputs",
) -> ExportResult:
    """Export `model` to `out` and verify it on `inputs`; the file appears only if it matches.

    Raises CrossDistillError when `out` exists (without `force`) or when the exported model's
    logits differ from PyTorch's by more than `allowed_difference(tolerance, largest |logit|)`
    (`tolerance` None: `default_tolerance(model)`).
    """
    if not isinstance(model, nn.Module):
        raise CrossDistillError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fmt = check_format(fmt)
    out = Path(out)
    other = next((f for f, suffix in SUFFIXES.items() if f != fmt and out.name.lower().endswith(suffix)), None)
    if other is not None:  # a .onnx file holding TorchScript would fail wherever it is opened
        raise CrossDistillError(f"output {out} has the suffix of the {other} format, but the format is {fmt}: "
                                f"name it {out.name[:-len(SUFFIXES[other])] + SUFFIXES[fmt]}, or export as {other}")
    if not isinstance(inputs, torch.Tensor):
        try:
            inputs = torch.as_tensor(np.asarray(inputs))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CrossDistillError(f"verification inputs must be a tensor (or an array), got "
                                    f"{type(inputs).__name__}: {exc}") from None
    inputs = for_model(model, inputs)  # float64 from numpy: in the model's own dtype
    tolerance = default_tolerance(model) if tolerance is None else tolerance
    if not (tolerance >= 0):  # also refuses NaN
        raise CrossDistillError(f"tolerance must be >= 0, got {tolerance}")
    if out.is_dir():
        raise CrossDistillError(f"output {out} is a directory; give a file name")
    if out.exists() and not force:
        raise CrossDistillError(f"output {out} already exists; pass --force (force=True) to replace it")
    tokens = inputs.dtype in (torch.int64, torch.int32)
    if inputs.dim() < 2 or not (inputs.is_floating_point() or tokens) or not bool(torch.isfinite(inputs).all()):
        raise CrossDistillError("verification inputs must be a finite float batch (NCHW for images), or token ids")
    # The caller's model gets its own train/eval flags back.
    with eval_mode(model):
        return _export_checked(model, out, fmt, inputs, tolerance, opset, inputs_label)


def _export_checked(model: nn.Module, out: Path, fmt: str, inputs: torch.Tensor, tolerance: float, opset: int,
                    inputs_label: str) -> ExportResult:
    example = inputs[:_TRACE_BATCH].clone()
    if len(example) < _TRACE_BATCH:
        example = example.repeat(_TRACE_BATCH, *[1] * (inputs.dim() - 1))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CrossDistillError(f"cannot write {out}: {exc.strerror or exc}") from None
    remove_dead_siblings(out)  # what exports killed before their rename left
    tmp = str(temp_sibling(out))
    try:
        try:
            with torch.no_grad():
                expected = model(inputs)
        except Exception as exc:  # noqa: BLE001 - the model's own error: it cannot take these inputs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CrossDistillError(f"the model does not run on the verification inputs ({tuple(inputs.shape)} "
                                    f"{inputs.dtype}: {type(exc).__name__}: {first}); nothing was written") from None
        free: tuple[str, ...] = ()
        out_axes: dict[str, dict[int, str]] | None = None
        note = ""
        if fmt == "onnx":
            other = _resized(model, inputs, expected)
            if other is not None:
                free = size_axes(inputs)
                # Free axes are kept only if the exporter takes them (it refuses an adaptive
                # pooling to a fixed size, say) and the file gives PyTorch's logits at the other
                # size too (a shape the trace wrote into the graph as a constant breaks it there).
                with torch.no_grad():
                    wanted = model(other)
                    out_axes = _output_axes(output_names(expected), model(example), wanted)
                try:
                    _export_onnx(_explicit_padding(model), example, tmp, opset, free, out_axes)
                    ok = max_abs_diff(wanted, _run_onnx(tmp, other)) <= allowed_difference(
                        tolerance, _largest(wanted))
                except Exception:  # noqa: BLE001 - any failure: the size stays fixed
                    ok = False
                if not ok:
                    note = ("size fixed: the model takes other sizes, but its ONNX graph does not (a shape the "
                            "trace wrote in as a constant)")
                free, out_axes = (free, out_axes) if ok else ((), None)
            got = _onnx_outputs(model, example, tmp, opset, inputs, free, out_axes)
        else:
            note = _export_torchscript(model, example, tmp)
            got = _run_torchscript(tmp, inputs)
        diff = max_abs_diff(expected, got)
        scale = _largest(expected)
        allowed = allowed_difference(tolerance, scale)
        if diff > allowed:
            raise CrossDistillError(
                f"the {fmt} export differs from the PyTorch model by up to {diff:.3g} in the logits "
                f"on {inputs_label} (allowed {allowed:.3g}: tolerance {tolerance:g} times the largest |logit|, "
                f"{scale:.3g}, when above 1); nothing was written; a larger --tolerance accepts it"
            )
        size = os.path.getsize(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CrossDistillError(f"cannot write {out}: {exc.strerror or exc}; nothing was written") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportResult(path=out, format=fmt, max_abs_diff=diff, n_inputs=len(inputs), inputs=inputs_label, bytes=size,
                        free_axes=free, note=note, tolerance=tolerance)


def _onnx_outputs(model: nn.Module, example: torch.Tensor, tmp: str, opset: int, inputs: torch.Tensor,
                  free: tuple[str, ...], out_axes: dict[str, dict[int, str]] | None = None) -> Any:
    """Export to `tmp` (size axes `free` left free) and run `inputs` through onnxruntime."""
    try:
        _export_onnx(_explicit_padding(model), example, tmp, opset, free, out_axes)
    except Exception as exc:  # noqa: BLE001 - the exporter's own errors, often with its whole graph appended
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise  # the disk's fault, not the model's: reported as a write error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CrossDistillError(f"the ONNX exporter cannot export this model ({type(exc).__name__}: {first}); "
                                "nothing was written; --format torchscript may take it") from None
    try:
        return _run_onnx(tmp, inputs)
    except Exception as exc:  # onnxruntime's own error types: one message, nothing written
        hint = ""
        if len(inputs) != len(example):
            try:
                _run_onnx(tmp, example)
                # It runs on the trace's batch only: the batch size went into the graph.
                hint = (f"; it runs on batches of {len(example)}, the size it was traced at, not on the "
                        f"{len(inputs)} verification inputs: the trace wrote the batch size into a shape of the "
                        "graph as a constant (a view or unflatten whose sizes it fixed)")
            except Exception:  # noqa: BLE001 - not that: the first error stands alone
                pass
        raise CrossDistillError(f"the exported ONNX model does not run in onnxruntime "
                                f"({type(exc).__name__}: {exc}){hint}; nothing was written") from None


def allowed_difference(tolerance: float, largest_logit: float) -> float:
    """float32 rounding grows with the values rounded, so the allowed difference scales with the
    largest |logit| once that exceeds 1 (logits near 500 differ by ~1e-4 after a faithful export)."""
    return tolerance * max(1.0, largest_logit)


def export(
    source: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    eval_data: str | Path | None = None,
    n_verify: int = 64,
    tolerance: float | None = None,
    force: bool = False,
    model_name: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    """Load a saved model (file or `crossdistill compress` run directory) and export it verified."""
    from crossdistill.persistence import load

    fmt = check_format(fmt)
    out = Path(out) if out is not None else default_output(source, fmt)
    if out.exists() and not force:  # fail before the work
        raise CrossDistillError(f"output {out} already exists; pass --force (force=True) to replace it")
    model = load(source, model=model_name)
    inputs, label = verification_inputs(model, eval_data, n_verify)
    return export_model(model, out, fmt, inputs, tolerance=tolerance, force=force, opset=opset, inputs_label=label)
