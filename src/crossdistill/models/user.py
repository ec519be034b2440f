"""Models the registry does not know: a user's own `nn.Module`, given as a factory
(`path/to/file.py:make_model` or `package.module:make_model`, a function returning the module)
or as the module itself through the Python API."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.model_inputs import FLOAT, example
from crossdistill.model_outputs import check_kind, kind_of, n_classes, predictions
from crossdistill.models.registry import ModelInfo, list_models, model_info
from crossdistill.train_flags import eval_mode

USER_FAMILY = "user"
# The paper's μ for networks it did not name (its ResNet value); declared settings left at None
# take it (pipeline.model_defaults).
USER_DEFAULT_MU = 0.9


def is_factory_spec(name: str) -> bool:
    """`file.py:fn` or `package.module:fn`, as opposed to a registered model name."""
    return ":" in name and name not in list_models()


def factory_file(spec: str) -> Path | None:
    """The file a `path/to/file.py:function` factory names; None for `package.module:function`
    (imported by name) or anything that is not a factory spec."""
    target = spec.rpartition(":")[0] if ":" in spec else ""
    return Path(target).expanduser() if target and (target.endswith(".py") or "/" in target) else None


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The function named by `spec`; the file is imported as a module of its own (its imports of
    neighbouring files work because its folder goes first on sys.path while it loads)."""
    target, _, fn_name = spec.rpartition(":")
    if not target or not fn_name.isidentifier():
        raise CrossDistillError(f"model {spec!r}: give a factory as path/to/file.py:function or module:function")
    path = factory_file(spec)
    if path is not None:
        if not path.is_file():
            raise CrossDistillError(f"model {spec!r}: no such file {path}")
        module_name = "crossdistill_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        # The file imported already under its own name (`import mymodels` in the caller's script):
        # that module, so a loaded student is an instance of the caller's class, not of a twin.
        module = sys.modules.get(module_name) or _imported_from(path.resolve())
        if module is not None:
            sys.modules[module_name] = module  # found once: the next load does not search again
        else:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise CrossDistillError(f"model {spec!r}: cannot import {path}")
            module = importlib.util.module_from_spec(loader_spec)
            folder = path.parent.resolve()
            # The files beside it are its own: a module of the same name that another factory's
            # folder (or anything else) put in sys.modules must not stand in for them while it
            # loads; the caller's module of that name is given back after. (Its other imports
            # stay, as any import does: a sibling imported later inside its function finds them.)
            shadowed = {name: m for name, m in sys.modules.items()
                        if _beside(folder, name) and not _inside(m, folder)}
            for name in shadowed:
                del sys.modules[name]
            sys.path.insert(0, str(folder))
            try:
                sys.modules[module_name] = module
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(module_name, None)
                raise CrossDistillError(f"model {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
            finally:
                sys.path.remove(str(folder))
                sys.modules.update(shadowed)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            # The crossdistill command does not put the current folder on the import path.
            beside = Path(*target.split(".")).with_suffix(".py")
            hint = (f"; a file of your own is named by its path: --model {beside}:{fn_name}" if beside.is_file()
                    else "")
            raise CrossDistillError(f"model {spec!r}: cannot import module {target!r}: {exc}{hint}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise CrossDistillError(f"model {spec!r}: {target} has no function {fn_name!r}")
    return fn


def _beside(folder: Path, name: str) -> bool:
    """Whether `name` (or the package it is in) is a module file or package in `folder`."""
    top = name.partition(".")[0]
    return (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file()


def _file_of(module: Any) -> Path | None:
    """A module's file, resolved; None for one without (built in, made in memory) or unreadable."""
    file = getattr(module, "__file__", None)
    try:
        return Path(file).resolve() if file else None
    except (OSError, ValueError):
        return None


def _inside(module: Any, folder: Path) -> bool:
    file = _file_of(module)
    return file is not None and file.is_relative_to(folder)


def _imported_from(path: Path) -> Any:
    """A module already in sys.modules whose file is `path`, or None."""
    return next((m for m in list(sys.modules.values()) if _file_of(m) == path), None)


def absolute_factory(spec: str) -> str:
    """`spec` with its file's path made absolute (a `package.module:function` spec as it is)."""
    path = factory_file(spec)
    return f"{path.resolve()}:{spec.rpartition(':')[2]}" if path is not None else spec


def build_user_model(spec: str) -> nn.Module:
    fn = load_factory(spec)
    try:
        inspect.signature(fn).bind()
    except TypeError as exc:
        # It is called with no arguments, at compress and again at every load.
        name = spec.rpartition(":")[2]
        raise CrossDistillError(
            f"model {spec!r}: the factory is called with no arguments, and it takes some ({exc}): add a function "
            f"that fixes them in the same file (def make(): return {name}(...)), or make = functools.partial({name}, "
            "...), and name that one") from None
    except ValueError:
        pass  # no signature to read (a builtin): the call says
    try:
        model = fn()
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise CrossDistillError(f"model {spec!r}: the factory failed at {where.filename}:{where.lineno}: "
                                f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise CrossDistillError(f"model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    from crossdistill.checks import unwrapped

    # DataParallel or torch.compile around the model: its weights and the student's keys are the
    # inner module's (as crossdistill.compress unwraps), and an in-place compile() is dropped.
    from crossdistill.train_flags import drop_compiled_forwards

    model = unwrapped(model)[0]
    drop_compiled_forwards(model)
    model.crossdistill_factory = spec
    return model


def _first_conv(model: nn.Module) -> nn.Module | None:
    """The model's first conv in module order (None without one)."""
    return next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)


def infer_info(model: nn.Module, name: str, input_size: Sequence[int], *, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, output: str | None = None, kind: str = "auto",
               input_dtype: str = FLOAT, sample: torch.Tensor | None = None) -> ModelInfo:
    """A ModelInfo for a model the registry does not know: what it returns (its predictions,
    their kind and number of classes: model_outputs) from one forward pass on zeros, which also
    checks, before any long work, that the input size fits. `sample`: two real inputs to run
    instead of made-up ones (token ids of real sentences, not padding)."""
    size = tuple(int(v) for v in input_size)  # (C, H, W) for images; any shape for other inputs
    c = size[0]
    from crossdistill.checks import check_float_parameters

    check_float_parameters(model, name)
    first = _first_conv(model)
    fed: list[int] = []  # the channel counts the first conv was given: a failure after it is not theirs
    hook = first.register_forward_pre_hook(lambda m, a: fed.append(a[0].shape[1] if a and a[0].dim() > 1 else -1)) \
        if first is not None else None
    try:
        # Each submodule's own train/eval flag comes back: a caller may keep parts in eval mode.
        # Two samples: a batch dimension of 1 cannot be told from a squeezed one.
        with eval_mode(model), torch.no_grad():
            out = model(sample[:2] if sample is not None and len(sample) >= 2
                        else example(size, 2, input_dtype, model=model))
    except Exception as exc:
        first_ok = first is not None and bool(fed) and all(k == first.in_channels for k in fed)
        if first_ok:
            first = None  # it ran on what it takes (a pixel_unshuffle before it): no hint about its input
        if isinstance(exc, TypeError) and "required positional argument" in str(exc):
            # A forward(ids, mask): the one tensor it was given is not all it takes.
            hint = ("; its forward takes several inputs: stack them into one tensor and wrap the model, "
                    "crossdistill.StackedInputs(model) (docs/any_model.md, 'Models with several inputs')")
        elif input_dtype == FLOAT and any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules()) \
                and not fed:
            # Float ids fail in the embedding, before any conv: the conv's shape advice would mislead.
            hint = "; its embedding takes token ids: give them as integers (ids.long()), not floats"
        elif input_dtype == FLOAT and first is not None and len(first.kernel_size) + 1 != len(size):
            # (3, 16, 16) given for one image reads as 3 samples of (16, 16).
            d = len(first.kernel_size)
            batch, what = {1: ("(N, C, L)", "signal"), 3: ("(N, C, D, H, W)", "clip")}.get(d, ("(N, C, H, W)", "image"))
            hint = (f"; its first conv takes samples of {d + 1} dimensions, these are {size}: "
                    f"give a batch {batch}, one {what} x as x.unsqueeze(0)"
                    + ("; on the command line uint8 arrays are images (N, H, W[, C]) and signals are float32 "
                       "(N, C, L)" if d == 1 and len(size) == 3 else ""))
        elif input_dtype == FLOAT and first is not None and len(size) == 3 and size[-1] == first.in_channels \
                and first.in_channels != c:
            hint = (f"; its first conv takes {first.in_channels} channels, and the inputs look N×H×W×C (channels "
                    "last, as image files and numpy arrays hold them): give them N×C×H×W, x.permute(0, 3, 1, 2) "
                    "(on the command line, --input-size C H W)")
        elif input_dtype == FLOAT and first is not None and first.in_channels != c:
            k = first.in_channels
            hint = (f"; its first conv takes {k} channels and the inputs have {c}: give inputs of {k} channels "
                    f"(--input-size {k} {' '.join(map(str, size[1:]))} where the images have them; otherwise convert "
                    "the images" + (", grayscale to RGB with PIL's Image.open(f).convert('RGB'))" if (k, c) == (3, 1)
                                    else ")"))
        elif input_dtype == FLOAT and not first_ok and isinstance(exc, RuntimeError):
            # torch's shape errors; an AttributeError or NameError is a bug of the forward's own.
            hint = "; give the input size the model expects (--input-size C H W, or C L for signals)"
        else:
            hint = ""
        raise CrossDistillError(
            f"model {name}: a forward pass on an input of size {size} failed: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    finally:
        if hook is not None:
            hook.remove()
    try:
        pred = predictions(out, output)
    except CrossDistillError as exc:
        raise CrossDistillError(f"model {name}: {exc}") from None
    if pred.dim() == 0 or pred.shape[0] != 2:
        raise CrossDistillError(f"model {name}: its output {output or ''} ({tuple(pred.shape)} for 2 inputs) has no "
                                "batch dimension first; the predictions must be one row per input")
    tokens = size[0] if input_dtype != FLOAT and len(size) == 1 else None
    kind = kind_of(pred, tokens) if kind == "auto" else check_kind(pred, kind, name)
    mean_t = tuple(float(m) for m in mean) if mean is not None else (0.0,) * c
    std_t = tuple(float(s) for s in std) if std is not None else (1.0,) * c
    if len(mean_t) != c or len(std_t) != c:
        raise CrossDistillError(f"model {name}: mean and std need one value per input channel ({c})")
    return ModelInfo(name=name, family=USER_FAMILY, input_size=size,  # type: ignore[arg-type]
                     num_classes=n_classes(pred, kind) or 0, mean=mean_t, std=std_t, default_mu=USER_DEFAULT_MU,
                     output=output, kind=kind, input_dtype=input_dtype)


def check_registered_outputs(name: str, output_key: str | None, output_kind: str) -> None:
    """A registered model returns (batch, classes) logits: output settings would be ignored."""
    if output_key is not None or output_kind not in ("auto", "classes"):
        raise CrossDistillError(f"model {name} returns one tensor of class logits: output_key and output_kind are "
                                "for models of your own")


def info_for(name: str, model: nn.Module | None = None, *, input_size: Sequence[int] | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             output: str | None = None, kind: str = "auto") -> ModelInfo:
    """The registry's info for a registered name, else one inferred from the model."""
    if name in list_models():
        return model_info(name)
    if model is None or input_size is None:
        raise CrossDistillError(f"model {name!r} is not registered: its input size must be given or inferred")
    return infer_info(model, name, input_size, mean=mean, std=std, output=output, kind=kind)


def info_of(model: nn.Module) -> ModelInfo:
    """What feeding `model` takes, from what crossdistill recorded on it: the registry's info for
    a registered model, the compression run's for a user's model just compressed, the file's for
    one loaded by crossdistill.load (a user's model loaded again can be evaluated, exported and
    saved like a registered one)."""
    name = getattr(model, "crossdistill_name", None)
    if isinstance(name, str) and name in list_models():
        return model_info(name)
    info = getattr(model, "crossdistill_info", None)
    if isinstance(info, ModelInfo):
        return info
    saved = getattr(model, "crossdistill_saved_info", None)
    if saved is not None and saved.input_size and (saved.num_classes or saved.kind == "values"):
        c = saved.input_size[0]
        return ModelInfo(name=saved.model, family=USER_FAMILY, input_size=tuple(saved.input_size),  # type: ignore[arg-type]
                         # No mean/std recorded (compressed from tensors): () says the normalisation is unknown.
                         num_classes=int(saved.num_classes or 0), mean=tuple(saved.mean or ()),
                         std=tuple(saved.std or ()), default_mu=USER_DEFAULT_MU, output=saved.output,
                         kind=saved.kind, input_dtype=saved.input_dtype)
    raise CrossDistillError(f"a {type(model).__name__} whose input size and classes crossdistill does not know: give "
                            "a model built by create_model, compressed by crossdistill, or loaded by crossdistill.load")

