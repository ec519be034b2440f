"""`crossdistill.compress`: cross distillation of any `nn.Module` from a few samples.

    import crossdistill
    student, report = crossdistill.compress(model, images, labels=labels, method="channels", keep=0.5,
                                            eval_data=(test_images, test_labels))
    crossdistill.save(student, "student.safetensors")

`images` may be a float tensor N×C×H×W already normalised as the model expects, a `Dataset`
or `DataLoader` yielding (image, label) pairs of such tensors, or a path the readers know (an
`.npz`, a CIFAR-10 or Fashion-MNIST folder: its train split; `eval_data` its test split), whose
uint8 pixels are scaled to [0, 1] and normalised with `mean`/`std` (default: a registered model's
own, else none). Every other keyword is a config setting (`method`, `objective`, `solver`,
`keep`, `sparsity`, `bits`, `finetune_epochs`, ... — see `crossdistill compress --help`).
"""
from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from crossdistill.checks import check_copyable, unwrapped, warn_hooks, warn_unnormalised
from crossdistill.device import is_channels_last
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.evaluation_timing import torch_threads
from crossdistill.model_inputs import check_token_ids, dtype_name
from crossdistill.models.registry import ModelInfo, list_models, model_info
from crossdistill.models.user import check_registered_outputs, infer_info
from crossdistill.train_flags import buffers_kept, eval_mode, global_state_kept, uncompiled


def _tensors_from(data: Any, role: str = "training") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels or None) from a tensor, a (images, labels) pair, a Dataset or a DataLoader."""
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (torch.Tensor, np.ndarray)):
        return torch.as_tensor(data[0]), (None if data[1] is None else _label_tensor(data[1]))  # (x, None): unlabelled
    # A dict of tensors is a model's several inputs, not samples (a list of tensors stays a list
    # of samples, one per item: the two cannot be told apart there).
    if isinstance(data, dict) and data and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data.values()):
        raise CrossDistillError(
            f"data given as a dict of tensors (keys {sorted(data)}): data is one batch of inputs, or an "
            "(inputs, labels) pair. For a model that "
            "takes several inputs, stack them and wrap the model: crossdistill.StackedInputs(model, names) "
            "and StackedInputs.stack(...) (docs/any_model.md, 'Models with several inputs')")
    is_dataset = isinstance(data, torch.utils.data.Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__"))
    if isinstance(data, torch.utils.data.DataLoader) or is_dataset or isinstance(data, Iterable):
        xs, ys = [], []
        if role == "training" and isinstance(data, torch.utils.data.DataLoader) and \
                not isinstance(data.sampler, torch.utils.data.SequentialSampler) and \
                not isinstance(data.dataset, torch.utils.data.IterableDataset):  # its order is its own
            # A shuffling or sampling loader: its order is its own, so the draw (and
            # fewshot_indices) is not fixed by `seed` and the indices are not the dataset's.
            warnings.warn(f"the DataLoader's {type(data.sampler).__name__} orders the samples: the draw then depends on "
                          "its random state (torch's global one, or its generator), not on seed alone, and the "
                          "report's fewshot_indices refer to that order, not the dataset's; pass shuffle=False "
                          "and no sampler", stacklevel=outside_stacklevel())
        if isinstance(data, torch.utils.data.DataLoader) and data.drop_last and data.batch_size:
            left = len(data.dataset) % data.batch_size if hasattr(data.dataset, "__len__") else 0
            if left:  # with a few images per class, each one counts
                warnings.warn(f"the DataLoader drops its last {left} {role} samples (drop_last=True); pass "
                              "drop_last=False to use them all", stacklevel=outside_stacklevel())
        items = data if isinstance(data, torch.utils.data.DataLoader) else _dataset_items(data)
        for item in items:
            if isinstance(item, dict):
                keys = sorted(item)
                image = next((k for k in keys if k in ("pixel_values", "image", "images", "img", "input", "x")), "image")
                label = next((k for k in keys if k in ("labels", "label", "target", "targets", "y")), "label")
                raise CrossDistillError(f"the data yields dicts (keys {keys}); give (image, label) pairs, "
                                        f"e.g. a Dataset whose __getitem__ returns (d[{image!r}], d[{label!r}])")
            if isinstance(item, (tuple, list)) and len(item) == 1:
                item = item[0]  # TensorDataset(x): inputs alone, unlabelled
            x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
            x = torch.as_tensor(x)
            yt = None if y is None else _label_tensor(y)
            batched = isinstance(data, torch.utils.data.DataLoader) and (
                data.batch_sampler is not None or
                # batch_size=None turns the loader's batching off: it yields what the dataset does,
                # samples or, from a dataset that makes its own, batches (one label per row).
                (y is not None and np.ndim(y) == 1 and x.dim() >= 2 and len(y) == x.shape[0]))
            xs.append(x if batched else x.unsqueeze(0))
            if yt is not None:
                # One sample's labels: a class (a scalar), or a vector or map (per-position labels).
                ys.append(yt.unsqueeze(0) if not batched and yt.numel() > 1 else yt)
        if not xs:
            raise CrossDistillError("the data yielded no images")
        shapes = sorted({tuple(x.shape[1:]) for x in xs})
        if len(shapes) > 1:
            # Samples of 4 dimensions, first ones differing: a list of batches read as samples.
            batches = not isinstance(data, torch.utils.data.DataLoader) and all(len(s) == 4 for s in shapes) and \
                len({s[1:] for s in shapes}) == 1
            how = ("these look like batches: give samples (a Dataset), a DataLoader, or the batches joined "
                   "with torch.cat" if batches else
                   "give samples of one shape (pad or cut sequences to one length, resize images)")
            raise CrossDistillError(f"the data's samples have different shapes ({', '.join(map(str, shapes[:3]))}"
                                    f"{', ...' if len(shapes) > 3 else ''}): {how}")
        return torch.cat(xs), (torch.cat(ys) if len(ys) == len(xs) else None)
    raise CrossDistillError(f"{'eval_data' if role == 'test' else 'data'} must be a tensor of images, a Dataset, a "
                            f"DataLoader or a path, got {type(data).__name__}")


def _label_tensor(labels: Any) -> torch.Tensor:
    """Integer class labels as a long tensor: 1-d (one per sample), or, for a model whose predictions
    are per position (segmentation), a map per sample as given (N×H×W); fractional values are
    refused, not truncated."""
    try:
        arr = labels if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if isinstance(arr, np.ndarray) and _names(arr):
            raise CrossDistillError(f"labels must be class numbers 0, 1, 2, ..., not names ({labels!r:.60}): map "
                                    "them to numbers first, e.g. [classes.index(name) for name in names], in the "
                                    "order of the model's outputs")
        y = torch.as_tensor(arr)
    except (ValueError, TypeError, RuntimeError) as exc:
        # A tuple of label maps for a model of several outputs, say: not one array.
        raise CrossDistillError(f"labels must be one array: a class per sample, or a class map per sample for a model "
                                f"that predicts per position ({type(labels).__name__} given: {exc}); labels score one "
                                "output (output_key), and inputs given alone compare every output with the "
                                "teacher's") from None
    if y.dim() < 2 or y[0].numel() == 1:
        y = y.reshape(-1)
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise CrossDistillError(f"labels must be class numbers 0, 1, 2, ..., got fractional values such as "
                                f"{float(y[y != y.round()][0]):g}; a model that predicts values (depth, a regression) "
                                "is scored against its teacher: give its inputs alone")
    if y.dtype == torch.bool:
        y = y.long()  # a binary model's labels: False/True are 0/1
    if y.is_complex():
        raise CrossDistillError(f"labels must be class numbers 0, 1, 2, ..., got dtype {y.dtype}")
    return y.long()


def _one_hot(y: torch.Tensor) -> bool:
    """Whether 2-d labels are one-hot rows (one 1 per row, the rest 0)."""
    return y.dim() == 2 and y.shape[1] > 1 and bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all())


def _names(arr: np.ndarray) -> bool:
    """Whether labels are class names (strings), not numbers."""
    return arr.dtype.kind in "US" or (arr.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in arr.ravel()))


def _dataset_items(data: Any) -> Iterable[Any]:
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return (data[i] for i in range(len(data)))
    return data


def _from_path(path: str | Path, role: str, mean: Sequence[float] | None, std: Sequence[float] | None,
               classes: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor, list[str] | None, list[str] | None]:
    from crossdistill.data import load_image_data, to_tensor

    # A folder or a data-set name holds both splits: the training images come from its train split.
    arrays = load_image_data(str(path), "test" if role == "test" else "train", align_to=classes)
    c = arrays.input_shape[0]
    return (to_tensor(arrays.x, mean or (0.0,) * c, std or (1.0,) * c),
            torch.as_tensor(arrays.y, dtype=torch.long), arrays.class_names, arrays.files)


def _images(data: Any, role: str, mean: Sequence[float] | None, std: Sequence[float] | None,
            classes: Sequence[str] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None, list[str] | None]:
    """Images, labels (None when there are none), class names (files that name them; test
    labels are renumbered to the training data's `classes`) and each image's file (a folder's)."""
    if isinstance(data, (str, Path)):
        return _from_path(data, role, mean, std, classes)
    x, y = _tensors_from(data, role)
    if x.is_meta or (y is not None and y.is_meta):
        raise CrossDistillError(f"the {role} data is on the meta device, which holds shapes but no values: give "
                                "the tensors themselves")
    if x.is_inference():
        x = x.clone()  # made under torch.inference_mode(): a copy outside it can go through the fine-tune's autograd
    if x.dim() >= 2 and not x.is_floating_point() and x.dtype not in (torch.uint8, torch.bool) \
            and not x.is_complex():
        # Token ids (a text model's input): the model's embedding turns them into the float
        # inputs its layers are solved on; they are fed as they are.
        if len(x) and int(x.min()) < 0:
            raise CrossDistillError(f"{role} data holds integers {tuple(x.shape)} {x.dtype} (token ids?) with "
                                    f"negative values ({int(x.min())})")
        return x.long(), (None if y is None else y.long()), None, None
    if x.dim() < 2 or not x.is_floating_point():
        if x.dtype == torch.uint8 and x.dim() == 4:
            # Pixels as stored: the tensors given here are fed as they are, so they must already be
            # what the model was trained on; an .npz of these pixels is scaled and normalised.
            last = x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
            layout = "x.permute(0, 3, 1, 2).float() / 255" if last else "x.float() / 255"
            how = (f"uint8 pixels {tuple(x.shape)}: give the float images the model takes ({layout}, then "
                   "normalised as in its training), or save them N×H×W×C in an .npz (x, y) and pass its path "
                   "with mean and std")
        else:
            how = f"got {tuple(x.shape)} {x.dtype}"
        raise CrossDistillError(f"{role} data must be a batch: float inputs (images N×C×H×W, signals N×C×L) or "
                                f"int64 token ids (N×L); {how}")
    if not bool(torch.isfinite(x).all()):
        raise CrossDistillError(f"{role} images hold NaN or infinite values")
    return x.float(), (None if y is None else y.long()), None, None


def _draw(images: torch.Tensor, labels: torch.Tensor | None, shots: int | None, n_samples: int | None,
          seed: int, num_classes: int | None, sampler: str = "random",
          class_names: Sequence[str] | None = None, kind: str = "classes") -> np.ndarray:
    """The few-shot indices; `num_classes` None: the labels are not the model's classes (its
    predictions are per position or values), any class numbers ≥ 0 group the draw."""
    from crossdistill.data import sample_few_shot

    n = images.shape[0]
    if labels is not None and len(labels) and int(labels.min()) < 0:
        raise CrossDistillError(f"label {int(labels.min())}: labels are class numbers 0, 1, 2, ...")
    if num_classes is None and labels is not None and len(labels):
        num_classes = int(labels.max()) + 1
    if labels is not None and len(labels) and int(labels.max()) >= num_classes:
        # A one-output model is read as a binary logit, two classes: a count or a regression
        # target beyond 1 more likely means the model is no classifier.
        what = "one output, read as a binary classifier's logit (labels 0 and 1)" if kind == "binary" else \
            f"{num_classes} outputs (labels are class numbers 0 ... {num_classes - 1})"
        raise CrossDistillError(f"label {int(labels.max())} is not a class of the model, which has {what}; a model "
                                "that is no classifier takes output_kind 'values' and n_samples (a draw of that many "
                                "samples, whatever their targets)")
    if shots is not None:
        if labels is None:
            raise CrossDistillError("shots (K per class) needs labels: pass labels=..., or n_samples")
        return sample_few_shot(labels.numpy(), shots=shots, seed=seed, num_classes=num_classes, mode=sampler,
                               class_names=class_names)
    if n_samples is not None:
        if labels is not None:
            return sample_few_shot(labels.numpy(), n=n_samples, seed=seed, num_classes=num_classes, mode=sampler)
        if n_samples > n:
            raise CrossDistillError(f"n_samples={n_samples} but only {n} images were given")
        if sampler == "first":
            return np.arange(n_samples, dtype=np.int64)
        return np.sort(np.random.default_rng(seed).choice(n, n_samples, replace=False)).astype(np.int64)
    return np.arange(n, dtype=np.int64)


def _eval_data(eval_data: Any, model: nn.Module, info: ModelInfo, images: torch.Tensor, mean: Sequence[float] | None,
               std: Sequence[float] | None, class_names: Sequence[str] | None
               ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Test inputs and labels (None: unlabelled, scored by the agreement with the teacher alone),
    checked against the model's predictions."""
    if eval_data is None:
        return None
    tx, ty, _, _ = _images(eval_data, "test", mean, std, class_names)
    if len(tx) == 0:
        raise CrossDistillError("eval_data holds no samples: give some, or leave eval_data out")
    if tuple(tx.shape[1:]) != tuple(images.shape[1:]) or tx.is_floating_point() != images.is_floating_point():
        last = images.dim() == 4 and tuple(tx.shape[1:]) == tuple(images.shape[2:]) + (images.shape[1],)
        hint = (": they are channels last, give them N×C×H×W, x.permute(0, 3, 1, 2)" if last else
                "" if images.is_floating_point() else " (pad or cut the token ids to one length)")
        raise CrossDistillError(f"eval_data samples have shape {tuple(tx.shape[1:])} {tx.dtype}, the training "
                                f"data's {tuple(images.shape[1:])} {images.dtype}{hint}")
    if not tx.is_floating_point():
        check_token_ids(model, tx, "eval")
    if ty is None:
        return tx, None
    if ty.shape[0] != tx.shape[0]:
        raise CrossDistillError(f"eval_data: {tx.shape[0]} samples but {ty.shape[0]} labels")
    from crossdistill.model_outputs import IGNORE, label_shape, predictions, scored_positions

    with eval_mode(model), torch.no_grad():
        want = label_shape(predictions(model(tx[:2]), info.output), info.kind)
    if want is None:
        raise CrossDistillError(f"eval_data has labels, but the model's predictions are {info.kind} (no classes): "
                                "give the inputs alone; the report compares the student's outputs with the teacher's")
    if tuple(ty.shape[1:]) != want:
        hint = "; these are one-hot rows: give y.argmax(1)" if _one_hot(ty) and not want else ""
        several = len(ty.shape) == 2 and not want and not hint  # multi-hot rows: several labels a sample
        hint = hint or ("; a model with several labels per sample (multi-label) is scored against the teacher "
                        "only: give the inputs alone, with output_kind 'values'" if several else "")
        raise CrossDistillError(f"eval_data labels have shape {tuple(ty.shape[1:])} per sample; the model's "
                                f"{info.kind} predictions take {want or 'one label'} per sample{hint}")
    per_position = info.kind in ("dense", "sequence")
    scored = ty[scored_positions(ty)] if per_position else ty  # 255 or negative: not scored
    if per_position and not scored.numel():
        raise CrossDistillError(f"eval_data labels: every position is marked not scored ({IGNORE} or negative); "
                                "give them without labels to compare the student with the teacher alone")
    if len(scored) and (int(scored.max()) >= info.num_classes or int(scored.min()) < 0):
        bad = int(scored.max()) if int(scored.max()) >= info.num_classes else int(scored.min())
        raise CrossDistillError(f"eval_data label {bad} is not a class of the model, which has "
                                f"{info.num_classes} outputs" + (f" ({IGNORE} or a negative label marks positions not "
                                                                 "scored)" if per_position else ""))
    return tx, ty


def _measure(model: nn.Module, info: ModelInfo, test: tuple[torch.Tensor, torch.Tensor | None] | None,
             scores: dict[str, float] | None, latency: bool = False) -> dict[str, Any]:
    """Size and FLOPs, with the `scores` on `test` (evaluation_agreement.compare's) when it was
    given, and the CPU latency at the report's batch sizes with `latency`."""
    from crossdistill.evaluation import REPORT_LATENCY_BATCHES, size_and_speed

    out: dict[str, Any] = {**(scores or {})} if test is not None else {}
    if test is not None:
        out["n_eval"] = int(test[0].shape[0])
    out.update(size_and_speed(model, info.input_size, REPORT_LATENCY_BATCHES if latency else (),
                              input_dtype=info.input_dtype))
    return out


def _class_name(model: nn.Module) -> str:
    """The name a report gives a model: its class's, the wrapped model's for StackedInputs."""
    from crossdistill.model_inputs import StackedInputs

    return type(model.model if isinstance(model, StackedInputs) else model).__name__


# compress's own keywords besides the settings: a setting named like one (progress=False) is a
# mistyped keyword, told as such rather than as an unknown config key among sixty.
_KEYWORDS = ("labels", "eval_data", "shots", "n_samples", "seed", "mean", "std", "name", "show_progress")


def _check_keywords(settings: dict[str, Any]) -> None:
    import difflib

    from crossdistill.config.catalog import settings as known_settings

    known = {k.split("@")[0] for k in known_settings()}
    for key in settings:
        if key in known or "." in key:
            continue
        # Only where a keyword is the nearest name: a mistyped setting (samplr=) is the config's to name.
        near = difflib.get_close_matches(key, [*_KEYWORDS, *sorted(known)], n=1, cutoff=0.6)
        if near and near[0] in _KEYWORDS:
            raise CrossDistillError(f"compress() got an unknown setting {key}=; did you mean its keyword {near[0]}=?")


def compress(model: nn.Module, data: Any, *,
             labels: Sequence[int] | Sequence[np.integer] | np.ndarray | torch.Tensor | None = None,
             eval_data: Any = None, shots: int | None = None, n_samples: int | None = None, seed: int = 0,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None, name: str | None = None,
             show_progress: bool = True, **settings: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Compress a copy of `model` (left unchanged) by layer-wise cross distillation on a few
    samples of `data`; returns `(student, report)`.

    data: the training inputs, normalised as the model expects: an N×C×H×W float tensor (N×C×L
        signals, N×L int64 token ids, a stack for `StackedInputs`) or numpy array, a Dataset or
        DataLoader of (input, label), or a path (.npz, a folder of class folders, 'cifar10').
    labels: one class per sample (tensor, numpy array or list), unless `data` carries them.
    shots / n_samples: K per class, or N in all (default: every sample given); seed: the draw's.
    eval_data: (inputs, labels), inputs alone (scored by agreement with the teacher), or a path:
        both models are scored on it, and their agreement reported.
    mean / std: the normalisation of pixels read from files (tensors are used as they are).
    name: the model's name in the report (a registered name takes that model's settings).
    **settings: `method` ('channels', the default; 'sparsity', 'quant', 'lowrank',
        'channels+quant', 'lowrank+quant') and its settings (keep=0.5, flops=, parameters=,
        budget='global'; sparsity=0.9; bits=4; rank_ratio=0.5), `objective` ('soft'; 'nocross',
        'mixed' with mu=, ...), `solver`, damping, views, finetune_epochs and the other
        finetune_* settings, sampler, baseline, threads, latency, output_key / output_kind,
        device. `crossdistill.settings()` lists every one with its default, range and help
        (`crossdistill compress --help` prints the same).

    The student is in eval mode; a model the registry does not know is saved with
    `crossdistill.save(student, path, factory="file.py:function")`, the function that rebuilds
    it. The report's fields are described in docs/report.md."""
    if not isinstance(model, nn.Module):
        exported = type(model).__name__ == "ExportedProgram"  # torch.export's: a graph, not the module
        raise CrossDistillError(f"model must be a torch.nn.Module, got {type(model).__name__}"
                                + (": compress the nn.Module it was exported from, then torch.export the student"
                                   if exported else ""))
    check_copyable(unwrapped(model)[0])
    warn_hooks(unwrapped(model)[0])
    # Every forward below runs the caller's model: a buffer its forward updates gets its value back.
    with buffers_kept(model), global_state_kept(), uncompiled(model):
        return _compress(model, data, labels=labels, eval_data=eval_data, shots=shots, n_samples=n_samples,
                         seed=seed, mean=mean, std=std, name=name, show_progress=show_progress, **settings)


def _compress(model: nn.Module, data: Any, *, labels: Sequence[int] | Sequence[np.integer] | np.ndarray | torch.Tensor | None,
              eval_data: Any,
              shots: int | None, n_samples: int | None, seed: int, mean: Sequence[float] | None,
              std: Sequence[float] | None, name: str | None, show_progress: bool,
              **settings: Any) -> tuple[nn.Module, dict[str, Any]]:
    from crossdistill.config import CompressConfig
    from crossdistill.pipeline import FewShot
    from crossdistill.pipeline import compress as run_compress

    model, factory = unwrapped(model)
    chosen = name or getattr(model, "crossdistill_name", None)
    name = chosen or factory or _class_name(model)
    # Only a registry-built model (or one named so on purpose) takes a registered model's settings:
    # a class of one's own called `resnet20` is not the registry's ResNet-20.
    registered = model_info(name) if chosen and name in list_models() else None
    if (mean is not None or std is not None) and not isinstance(data, (str, Path)):
        # Tensors are the model's inputs as they are: normalising them here would be a guess
        # at their scale, and recording a mean/std they were not made with misleads `evaluate`.
        raise CrossDistillError("mean/std normalise pixels read from files; data given as tensors is used as it "
                                "is: normalise it yourself and leave mean/std out")
    if registered is not None:  # pixels read from files are normalised as the registered model was trained
        mean = registered.mean if mean is None else mean
        std = registered.std if std is None else std
    if shots is not None and n_samples is not None:
        raise CrossDistillError(f"give shots (K={shots} per class) or n_samples (N={n_samples} in all), not both")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CrossDistillError(f"seed must be an integer >= 0, got {seed!r}")  # checked before the draw uses it
    from crossdistill.data.fewshot import check_count

    # Checked before the draw too (without labels it is numpy's), and numpy's integers made plain ones.
    seed = int(seed)
    shots = None if shots is None else check_count(shots, "shots")
    n_samples = None if n_samples is None else check_count(n_samples, "n_samples")
    from crossdistill.data.readers_folder import order_given

    with order_given(settings.get("classes") is not None):
        images, found_labels, class_names, files = _images(data, "training", mean, std)
    if settings.get("classes") is not None:
        from crossdistill.data.align import renumbering

        class_names, mapping = renumbering(class_names, settings["classes"], str(data) if isinstance(
            data, (str, Path)) else "training data")
        found_labels = None if found_labels is None else torch.as_tensor(mapping)[found_labels]
    if isinstance(data, (str, Path)) and images.dim() == 4:  # image files (signals are used as stored)
        warn_unnormalised(name, mean, std, "mean/std")
    if labels is not None:
        if found_labels is not None:
            raise CrossDistillError("labels given twice, in the data (its (input, label) pairs) and as labels=: "
                                    "give them once")
        found_labels = _label_tensor(labels)
    if not images.is_floating_point():
        check_token_ids(model, images, "training")
    if found_labels is not None and found_labels.shape[0] != images.shape[0]:
        raise CrossDistillError(f"{images.shape[0]} images but {found_labels.shape[0]} labels")
    from crossdistill.config.catalog import NOT_API_SETTINGS

    for key, why in NOT_API_SETTINGS.items():
        if key in settings:
            raise CrossDistillError(f"{key}= is a setting of the command line; here {why}")
    _check_keywords(settings)
    if not (isinstance(show_progress, (bool, np.bool_)) or (type(show_progress) is int and show_progress in (0, 1))):
        raise CrossDistillError(f"show_progress must be True or False, got {show_progress!r}")
    show_progress = bool(show_progress)
    if isinstance(settings.get("device"), torch.device):
        settings["device"] = str(settings["device"])
    sizes = [k for k in ("keep", "flops", "parameters") if settings.get(k) is not None]
    if len(sizes) > 1:  # keep=0.5 beside flops= is given, though the config cannot tell it from its default
        raise CrossDistillError(f"give one of keep=, flops=, parameters=, not {' and '.join(k + '=' for k in sizes)}")
    if isinstance(settings.get("output_key"), int) and not isinstance(settings["output_key"], bool):
        settings["output_key"] = str(settings["output_key"])  # an index, as on the command line
    output_key, output_kind = settings.get("output_key"), settings.get("output_kind", "auto")
    if registered is not None:
        check_registered_outputs(name, output_key, output_kind)
    info = registered or infer_info(model, name, tuple(images.shape[1:]), mean=mean, std=std, output=output_key,
                                    kind=output_kind, input_dtype=dtype_name(images), sample=images[:2])
    classes = info.kind in ("classes", "binary")  # otherwise training labels only group the draw
    if classes:
        from crossdistill.data.align import check_named_classes

        # Names only come from files; a tensor is not formatted (for a large one that costs time).
        check_named_classes(class_names, info.num_classes, str(data) if isinstance(data, (str, Path)) else "training data",
                            None if found_labels is None else found_labels.numpy(),
                            listed=settings.get("classes") is not None)
    if found_labels is not None and found_labels.dim() > 1:
        # Per-position labels (a segmentation map) score a dense model on eval_data; the draw
        # needs one label per image (or none: n_samples).
        hint = "; these are one-hot rows: give y.argmax(1)" if _one_hot(found_labels) else ""
        raise CrossDistillError(f"training labels of shape {tuple(found_labels.shape)}: the few-shot draw takes one "
                                f"label per sample (its class), or none with n_samples=N{hint}")
    idx = _draw(images, found_labels, shots, n_samples, seed, info.num_classes if classes else None,
                settings.get("sampler", "random"), class_names, info.kind)
    class_counts = None
    if found_labels is not None:
        from crossdistill.data.fewshot import check_class_coverage

        if classes:
            check_class_coverage(found_labels.numpy(), info.num_classes, "training data", class_names)
        class_counts = np.bincount(found_labels[idx].numpy(),
                                   minlength=info.num_classes if classes else 0).tolist()
    few = FewShot(images=images[idx], labels=(found_labels[idx] if found_labels is not None
                                              else torch.zeros(len(idx), dtype=torch.long)), indices=idx,
                  labelled=found_labels is not None and classes)
    draw = {"shots": shots} if shots is not None else {"n_samples": int(len(idx))}
    cfg = CompressConfig(model=name, seed=seed, **draw, **settings).validate()
    test = _eval_data(eval_data, model, info, images, mean, std, class_names)
    if cfg.baseline is not None:
        from crossdistill.baselines import get_baseline

        compress_fn = get_baseline(cfg.baseline, show_progress=show_progress)
    else:
        compress_fn = functools.partial(run_compress, show_progress=show_progress)
    start = time.perf_counter()
    # The teacher runs in eval mode throughout; the caller's model gets its own flags back.
    with eval_mode(model), torch_threads(cfg.threads):
        result = compress_fn(model, few, cfg)
        compress_seconds = time.perf_counter() - start  # as the command line's: evaluation not included
        t_scores = s_scores = agreement = None
        if test is not None:
            from crossdistill.evaluation_agreement import EVAL_BATCH, compare
            from crossdistill.model_outputs import batch_slices

            tx, ty = test
            batches = ((tx[s], None if ty is None else ty[s]) for s in batch_slices(len(tx), EVAL_BATCH))
            t_scores, s_scores, agreement = compare(model, result.student, batches, output=info.output,
                                                    kind=info.kind)
        teacher_measures = _measure(model, info, test, t_scores, cfg.latency)
    from crossdistill.checks import warn_at_chance, warn_far_from_teacher

    warn_at_chance(teacher_measures, info.kind, info.num_classes)
    warn_far_from_teacher(agreement, len(test[0]) if test is not None else None)
    student = result.student
    if is_channels_last(model):
        # The solves write plain row-major weights; a model kept in channels_last (for its speed
        # on the CPU or with cuDNN) gets its layout back.
        student = student.to(memory_format=torch.channels_last)
    if registered is None and not isinstance(data, (str, Path)):
        # Tensors came in normalised by the caller, in a way this run never saw: the saved file
        # must not claim mean 0 / std 1, or `crossdistill evaluate` would feed raw pixels.
        info = dataclasses.replace(info, mean=(), std=())
    student.crossdistill_info = info  # what saving a model the registry does not know records
    if class_names is not None:
        student.crossdistill_class_names = list(class_names)  # evaluate numbers test data by them
    if registered is None and factory:
        student.crossdistill_factory = factory
    with torch_threads(cfg.threads):
        student_measures = _measure(student, info, test, s_scores, cfg.latency)
    from crossdistill.pipeline import run_report

    report = run_report(cfg, result, few, info, shots=shots, seconds=compress_seconds,
                        threads=cfg.threads or torch.get_num_threads(), class_counts=class_counts,
                        class_names=class_names, files=files, teacher=model)
    report.update({
        "teacher": teacher_measures, "student": student_measures,
        **({"agreement": {**agreement, "n_eval": int(test[0].shape[0])}} if agreement is not None else {}),
        **({"n_eval": int(test[0].shape[0]), "eval_batch": EVAL_BATCH} if test is not None else {}),
    })
    return student, report
