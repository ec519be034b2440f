"""Checks that data fits the model it is fed to (and that the model can be copied into a
student), before any work is done.

A data set can be valid on its own (uint8 pixels, labels in [0, its own class count)) and still
not fit a model: other image size, more classes than the classifier has. Found late, these
surface as a shape error deep inside a layer or as a silently meaningless accuracy, so every
entry point checks them up front with one message that names the file.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

from torch import nn

from crossdistill.data.arrays import ImageArrays
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.models.registry import ModelInfo

__all__ = ["HookWarning", "NormalisationWarning", "check_copyable", "check_data_fits_model", "model_copy",
           "warn_hooks", "warn_unnormalised"]


class NormalisationWarning(UserWarning):
    """Image files fed to a model of one's own without a mean and std (the CLI prints one line)."""


def warn_unnormalised(model: str, mean: Sequence[float] | None, std: Sequence[float] | None,
                      how: str = "--mean/--std") -> None:
    """Say that pixels read from files reach `model` only scaled to [0, 1]: its accuracy (and the
    student's) is then that of a model fed inputs it was not trained on, with nothing else to
    tell the user why. `how`: the settings' names where the call comes from."""
    if mean is None and std is None:
        warnings.warn(f"no {how} given: {model} gets the images' pixels scaled to [0, 1], not normalised; give "
                      f"the {how} it was trained with, unless its forward normalises them itself",
                      NormalisationWarning, stacklevel=outside_stacklevel())


class BatchStatisticsWarning(UserWarning):
    """The model normalises with each batch's statistics in eval mode: its outputs depend on the batch."""


def warn_batch_statistics(model: nn.Module, depends: str) -> None:
    """Say when BatchNorms without running statistics (track_running_stats=False) make the
    model's output for one image depend on the images beside it in eval mode: the hidden states
    the solve fits and every score then depend on batch sizes, which nothing else would show.
    `depends`: what depends on which batch size in the caller's work."""
    from torch.nn.modules.batchnorm import _BatchNorm

    names = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is None]
    if not names:
        return
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    one = len(names) == 1
    warnings.warn(f"{len(names)} BatchNorm{'' if one else 's'} of the model ({shown}) keep{'s' if one else ''} no "
                  f"running statistics (track_running_stats=False) and normalise{'s' if one else ''} each batch by "
                  f"its own in eval mode too: the model's outputs depend on the batch, {depends}",
                  BatchStatisticsWarning, stacklevel=outside_stacklevel())


class ChanceScoreWarning(UserWarning):
    """A model (the teacher) scores no better than guessing on the evaluation data."""


def warn_at_chance(scores: dict[str, Any] | None, kind: str, num_classes: int, who: str = "the teacher itself") -> None:
    """Say when the teacher's own top-1 cannot be told from guessing: labels numbered otherwise
    than the model's classes (folders sorted by name against a model trained on another order),
    inputs normalised otherwise than in its training, or a model that is no classifier (a
    regressor's one output read as a binary logit) give that, and every figure of the run then
    measures nothing, which nothing else would point out."""
    if not scores or kind not in ("classes", "binary") or num_classes < 2:
        return
    top1, n = scores.get("top1"), scores.get("n_eval")
    if top1 is None or not n or n < 30:
        return
    chance = 1.0 / num_classes
    # Three standard deviations of a guesser's score on n images above its mean.
    if float(top1) / 100.0 > chance + 3.0 * (chance * (1.0 - chance) / n) ** 0.5:
        return
    warnings.warn(f"{who} scores {float(top1):.1f} % top-1 on the {n} evaluation images, no better than "
                  f"guessing among {num_classes} classes ({100 * chance:.1f} %): check that the labels number the "
                  "classes as the model does (a folder's classes are numbered by their sorted names, an .npz's y is "
                  "taken as stored) and that mean/std are those it was trained with; a model that is no classifier "
                  f"(its outputs were read as {'one binary logit' if kind == 'binary' else 'class logits'}) takes "
                  "output_kind 'values' (--output-kind values)",
                  ChanceScoreWarning, stacklevel=outside_stacklevel())


class FarFromTeacherWarning(UserWarning):
    """The student's outputs are no closer to the teacher's than outputs of zeros would be."""


def warn_far_from_teacher(agreement: dict[str, Any] | None, n_eval: int | None = None) -> None:
    """Say when the student has lost what the teacher computes: a relative output error of 1 is
    what a model answering zeros scores, so at or above it the student is no approximation of
    the teacher, whatever its top-1 (a few-class task's accuracy can hide it) says. Each output
    of several is looked at on its own: a small head beside large logits weighs nothing in the
    pooled figure."""
    if not agreement:
        return
    errors = agreement.get("output_errors") or {"": agreement.get("output_error")}
    far = {k: float(v) for k, v in errors.items() if v is not None and float(v) >= 1.0}
    if not far:
        return
    which = ", ".join(f"output {k}: {v:.3g}" if k else f"{v:.3g}" for k, v in far.items())
    on = f" on the {n_eval} evaluation samples" if n_eval else ""
    warnings.warn(f"the student's outputs are no closer to the teacher's than zeros would be{on} (relative output "
                  f"error {which}; 1 is what outputs of zeros score): keep more (a higher keep, flops or "
                  "parameters share, fewer bits or a higher rank) or fine-tune",
                  FarFromTeacherWarning, stacklevel=outside_stacklevel())


def check_input_shape(data: ImageArrays, input_size: Sequence[int], model: str, where: str) -> None:
    """Raise CrossDistillError unless one sample of `data` is what the model takes."""
    size = tuple(int(v) for v in input_size)
    if data.input_shape != size:
        # Images are described as stored (H, W, C); the model's size is given the same way.
        images = len(size) == 3 and not data.is_signal
        expected = f"{(size[1], size[2], size[0])}" if images else f"inputs of shape {size}"
        hint = ""
        if images and data.image_shape == size:
            # (3, 32, 32) stored where (32, 32, 3) belongs: the arrays were saved channels first.
            hint = (": the .npz holds the images channels first (N×C×H×W); images are stored N×H×W×C, uint8: "
                    "save x.transpose(0, 2, 3, 1)")
        elif images and data.input_shape[1:] == size[1:]:
            # Only the channels differ: no --input-size fixes that, converting the images does.
            how = {(3, 1): " (grayscale to RGB: PIL's Image.open(f).convert('RGB'))",
                   (1, 3): " (RGB to grayscale: PIL's Image.open(f).convert('L'))"}.get((size[0], data.input_shape[0]), "")
            hint = f": convert the images to {size[0]} channel{'s' * (size[0] != 1)}{how}"
            if data.note:
                hint += f"; {data.note}"
        elif images and data.input_shape == (size[0], size[2], size[1]):
            # --input-size takes C H W; (1, 64, 48) given for 48×64 images.
            hint = (f": height and width swapped? the images are {data.input_shape[1]} high and {data.input_shape[2]} "
                    f"wide (--input-size C H W: {' '.join(map(str, data.input_shape))})")
        raise CrossDistillError(f"{where}: {data.describe_shape()} but {model} expects {expected}{hint}")


def check_data_fits_model(data: ImageArrays, model: str | ModelInfo, *, num_classes: int | None = None,
                          role: str = "data", scored: bool = False,
                          instead: str = "leave the evaluation data out") -> None:
    """Raise CrossDistillError unless `data`'s images have the model's input size and its labels
    are classes of the model (`num_classes` defaults to the registered model's). `scored`: the
    data is to score the model's predictions against its labels (one per image), which needs
    predictions of one class per image."""
    from crossdistill.models.registry import model_info

    info = model if isinstance(model, ModelInfo) else model_info(model)
    model = info.name
    where = data.source or role
    check_input_shape(data, info.input_size, model, where)
    if info.kind not in ("classes", "binary"):
        if scored:
            raise CrossDistillError(
                f"{where}: {model}'s predictions are {info.kind} (not one class per image), so a top-1 against "
                f"the file's labels means nothing: {instead}, or use the Python API, which scores them per "
                "position (crossdistill.evaluation_agreement.scores) or against the teacher (the agreement in "
                "crossdistill.compress's report)")
        return  # the labels only draw the few-shot images: any numbering will do
    k = int(num_classes if num_classes is not None else info.num_classes)
    top = int(data.y.max()) if len(data.y) else -1
    if top >= k:
        names = data.class_names or []
        # A folder's classes are its sorted subfolders: name the ones the model has no output for.
        extra = [names[i] for i in sorted({int(v) for v in data.y if v >= k}) if i < len(names)]
        which = f" (class{'es' * (len(extra) > 1)} {', '.join(extra)})" if extra else ""
        raise CrossDistillError(
            f"{where}: label {top}{which} is out of range for {model}, which has {k} classes (labels 0..{k - 1})"
        )


def model_copy(model: nn.Module) -> nn.Module:
    """copy.deepcopy of a model, for a forward that stores what it computed on the module
    (`self.feat = x` while autograd records): deepcopy refuses such a non-leaf tensor, so the
    copy gets it detached instead (the next forward replaces it anyway)."""
    import copy

    import torch

    memo: dict[int, Any] = {}
    for m in model.modules():
        for value in vars(m).values():
            for t in (value if isinstance(value, (list, tuple)) else
                      value.values() if isinstance(value, dict) else (value,)):
                if isinstance(t, torch.Tensor) and not t.is_leaf:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


class HookWarning(UserWarning):
    """Hooks of the caller's own on the model to compress."""


def hooked_modules(model: nn.Module) -> str:
    """'' or how many modules of `model` hold hooks and which ("2 modules of the model (c1, fc)")."""
    hooked = sorted({name or type(model).__name__ for name, m in model.named_modules()
                     for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                                   getattr(m, "_backward_pre_hooks", {}))
                     if hooks})
    if not hooked:
        return ""
    shown = ", ".join(hooked[:4]) + (", ..." if len(hooked) > 4 else "")
    return f"{len(hooked)} module{'s' * (len(hooked) > 1)} of the model ({shown})"


def warn_hooks(model: nn.Module) -> None:
    """Name the caller's hooks on `model`: the student is a deep copy, so they come with it, run on
    every forward of the compression (teacher and student: hundreds of calls; a hook that stores
    what it sees keeps all of it) and stay on the student (except on layers that low rank replaces)."""
    hooked = hooked_modules(model)
    if hooked:
        warnings.warn(f"hooks are registered on {hooked}: "
                      "they run on every forward pass of the compression and are copied into the student; remove "
                      "them first (handle.remove()) unless they are part of what the model computes",
                      HookWarning, stacklevel=outside_stacklevel())


def compiled_inner(model: nn.Module) -> nn.Module | None:
    """The module torch.compile wrapped, for its OptimizedModule (recognised by its `_orig_mod`,
    without importing torch._dynamo); None for any other module."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else None


def unwrapped(model: nn.Module) -> tuple[nn.Module, str | None]:
    """The module inside DataParallel, DistributedDataParallel and torch.compile's wrapper (any
    nesting of them): the user's model, with its own layer names and state-dict keys; and the
    `crossdistill_factory` set on the outermost of them that has one (the caller's modules are
    not written to)."""
    factory = getattr(model, "crossdistill_factory", None)
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif compiled_inner(model) is not None:
            model = compiled_inner(model)
        else:
            return model, factory
        factory = factory or getattr(model, "crossdistill_factory", None)


def inner_module(model: nn.Module) -> nn.Module:
    """The user's module inside any wrappers (`unwrapped`)."""
    return unwrapped(model)[0]


def check_float_parameters(model: nn.Module, name: str) -> None:
    """Refuse parameters that are not float32: the layer statistics and solves need float32 layers
    (they accumulate in float64), and a half-precision forward fails deep inside the capture."""
    import torch

    low = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.dtype != torch.float32})
    if low:
        raise CrossDistillError(f"model {name}: its parameters are {', '.join(low)}; compress a float32 copy "
                                "(model.float()) and cast the student back afterwards")


def check_copyable(model: nn.Module) -> None:
    """Refuse a TorchScript module, and, naming the layers, a model that cannot be copied into a student: torch's older
    `torch.nn.utils.weight_norm` and `spectral_norm` leave a computed weight (once the model has
    run) that copy.deepcopy rejects."""
    import torch
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if isinstance(model, torch.fx.GraphModule) and ("eval" in vars(model) or "train" in vars(model)):
        # torch.export's ExportedProgram.module() replaces train()/eval() with ones that raise:
        # every forward of a compression runs the teacher in eval mode.
        raise CrossDistillError("this GraphModule comes from torch.export (ExportedProgram.module()), whose train() and "
                                "eval() torch refuses: compress the nn.Module it was exported from, then export the "
                                "student")
    check_float_parameters(model, type(model).__name__)
    if isinstance(model, torch.jit.ScriptModule):
        # Its forward is compiled code: hooks, the graph trace and the layer solves cannot reach
        # its layers (quantization would return it unchanged, the others find nothing to prune).
        raise CrossDistillError(f"{type(model).__name__} is a TorchScript module (torch.jit.script / torch.jit.trace): "
                                "compress the nn.Module it was made from, then script the student")

    compiled = [name for name, m in model.named_modules() if name and compiled_inner(m) is not None]
    if compiled:
        # Its layers sit under `_orig_mod.`: the graph trace stops at the compiled region, and the
        # student's keys would not fit the model its factory builds. The outermost wrapper is
        # taken off by crossdistill.compress; one inside cannot be without changing the model.
        raise CrossDistillError(f"{', '.join(compiled[:3])} {'is' if len(compiled) == 1 else 'are'} wrapped by "
                                f"torch.compile: compress the modules it wraps ({compiled[0]} = {compiled[0]}._orig_mod), "
                                "then compile the student's")

    made = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_inference()]
    if made:
        # Inference tensors cannot take part in autograd (the channel trace, the fine-tune),
        # and stay so in every copy.
        raise CrossDistillError(f"the model's tensors were made under torch.inference_mode() ({', '.join(made[:3])}"
                                f"{', ...' if len(made) > 3 else ''}): build or load the model outside it (calling "
                                "compress inside it is fine)")

    forms = {WeightNorm: "weight_norm", SpectralNorm: "spectral_norm"}
    old = {name: forms[type(h)] for name, m in model.named_modules() for h in m._forward_pre_hooks.values()
           if type(h) in forms}
    if old:
        used = sorted(set(old.values()))
        raise CrossDistillError(
            f"layers {sorted(old)} use torch.nn.utils.{' and '.join(used)} (the older form), whose models cannot be "
            f"copied: remove it ({' / '.join(f'torch.nn.utils.remove_{u}(layer)' for u in used)}) or use the "
            "torch.nn.utils.parametrizations form")
