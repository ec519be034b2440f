"""Accuracy, size, FLOPs and latency of a model: the numbers every compression result reports.

Split by job: evaluation_counts counts parameters and FLOPs, evaluation_timing holds the
latency record and the thread/load helpers, progress draws the bars; this module keeps the
measurements (accuracy, latency timing) and the `evaluate_*` entry points. Every name stays
importable from here.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from crossdistill.data.transforms import to_tensor
from crossdistill.device import module_device
from crossdistill.errors import CrossDistillError
from crossdistill.evaluation_agreement import EVAL_BATCH
from crossdistill.evaluation_counts import count_flops, count_nonzero_params, count_params
from crossdistill.train_flags import eval_mode
from crossdistill.evaluation_timing import LatencyResult, load_average, torch_threads
from crossdistill.model_inputs import example, for_model
from crossdistill.model_outputs import batch_slices, predicted, predictions
from crossdistill.models import ModelInfo, model_info
from crossdistill.progress import progress_bar

__all__ = [
    "LatencyResult",
    "accuracy",
    "count_params",
    "count_nonzero_params",
    "count_flops",
    "measure_latency",
    "evaluate_model",
    "evaluate_for",
    "evaluate_pair_for",
    "size_and_speed",
    "REPORT_LATENCY_BATCHES",
    "load_average",
    "progress_bar",
    "torch_threads",
]

# The batch sizes every compression report times: one image (interactive use) and a full
# batch (throughput); teacher and student alike, so their rows compare.
REPORT_LATENCY_BATCHES = (1, 128)


def _check_images(x: Any, y: Any, mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    signal = x.ndim == 3 and np.issubdtype(x.dtype, np.floating)  # float N x C x L, as stored
    if x.dtype != np.uint8 and not signal:
        raise CrossDistillError(f"images must be uint8 pixels (0..255), got dtype {x.dtype}")
    if x.ndim == 3 and not signal:  # grayscale N x H x W
        x = x[..., None]
    if x.ndim != 4 and not signal:
        raise CrossDistillError(f"images must be N x H x W x C, got shape {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise CrossDistillError(f"need one label per image: {len(x)} images, labels of shape {tuple(y.shape)}")
    if len(x) == 0:
        raise CrossDistillError("no images to evaluate")
    channels = x.shape[1] if signal else x.shape[3]
    if len(mean) != channels or len(std) != channels:
        raise CrossDistillError(
            f"{'signals' if signal else 'images'} have {channels} channels but mean/std have "
            f"{len(mean)}/{len(std)} entries "
            "(is this the right data set for the model?)"
        )
    return x, y


def _top1_kind(kind: str) -> None:
    if kind not in ("classes", "binary"):
        raise CrossDistillError(f"the model's predictions are {kind} (not one class per image); a top-1 against "
                                "one label per image means nothing for them")


def accuracy(
    model: nn.Module,
    x_uint8: np.ndarray,
    y: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = EVAL_BATCH,
    progress: str | None = None,
    output: str | None = None,
    kind: str = "classes",
) -> float:
    """Top-1 accuracy in percent on uint8 N x H x W x C images (or float N x C x L signals), in eval mode, in chunks;
    `progress` names a progress bar on stderr (None: silent). `output` and `kind` say which of the
    model's outputs holds its predictions and how they are read (model_outputs): one label per
    image, so (batch, classes) logits or one binary logit."""
    _top1_kind(kind)
    x, y = _check_images(x_uint8, y, mean, std)
    if batch_size < 1:
        raise CrossDistillError(f"batch size must be >= 1, got {batch_size}")
    device = module_device(model)
    correct = 0
    with eval_mode(model), torch.inference_mode(), progress_bar(progress, len(x), "img") as bar:
        for s in batch_slices(len(x), batch_size):
            # Normalise chunk by chunk: a float copy of a whole split would cost 4x its uint8 size.
            xb = for_model(model, to_tensor(x[s], mean, std).to(device))
            pred = predicted(predictions(model(xb), output), kind).cpu().numpy()
            correct += int((pred == y[s]).sum())
            bar.update(len(xb))
    return 100.0 * correct / len(x)


def measure_latency(
    model: nn.Module,
    input_size: Sequence[int],
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 20,
    progress: str | None = None,
    input_dtype: str = "float32",
) -> LatencyResult:
    """Median and IQR (ms) of a forward pass of `batch_size` random images using `threads` CPU threads.

    `threads=None` keeps torch's current setting. The previous thread count is restored afterwards.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise CrossDistillError("latency needs batch_size >= 1, repeats >= 1 and warmup >= 0")
    device = module_device(model)
    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise CrossDistillError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    used_threads = torch.get_num_threads()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = example(input_size, batch_size, input_dtype, model=model, random=True).to(device)
    times: list[float] = []
    load = load_average()
    try:
        with eval_mode(model), torch.inference_mode(), progress_bar(progress, warmup + repeats, "pass") as bar:
            for _ in range(warmup):
                model(x)
                bar.update(1)
            sync()
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - t0) * 1000.0)
                bar.update(1)
    finally:
        torch.set_num_threads(old_threads)
    q1, q3 = np.percentile(times, [25, 75])
    return LatencyResult(
        batch_size=batch_size,
        threads=used_threads,
        median_ms=float(statistics.median(times)),
        iqr_ms=float(q3 - q1),
        repeats=repeats,
        warmup=warmup,
        device=str(device),
        load_average=load[0] if load else None,
    )


def evaluate_model(
    model: nn.Module,
    data: Any,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Sequence[int],
    latency_batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    measure_speed: bool = True,
    batch_size: int = EVAL_BATCH,
    label: str | None = None,
    output: str | None = None,
    kind: str = "classes",
    input_dtype: str = "float32",
) -> dict[str, Any]:
    """All report numbers in one dict; `label` (e.g. 'teacher') shows progress bars on stderr
    while evaluating and timing (None: silent).

    `data` is an ImageArrays (anything with `.x` uint8 NHWC and `.y`) or an (x, y) pair.
    Returns top1 (%), n_eval, params, nonzero_params, flops (per image, 2 per MAC),
    input_size, and latency: a list of LatencyResult dicts (empty when measure_speed is False).
    """
    x, y = _arrays(data)
    top1 = accuracy(model, x, y, mean, std, batch_size=batch_size,
                    progress=None if label is None else f"evaluating {label}", output=output, kind=kind)
    return {"top1": top1, "n_eval": int(len(y)),
            **size_and_speed(model, input_size, latency_batch_sizes if measure_speed else (), threads=threads,
                             label=label, input_dtype=input_dtype)}


def _arrays(data: Any) -> tuple[Any, Any]:
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    try:
        x, y = data
    except (TypeError, ValueError):
        raise CrossDistillError("data must be an ImageArrays or an (x, y) pair") from None
    return x, y


def size_and_speed(model: nn.Module, input_size: Sequence[int], latency_batch_sizes: Sequence[int], *,
                   threads: int | None = None, label: str | None = None, input_dtype: str = "float32"
                   ) -> dict[str, Any]:
    """The report numbers that need no data: params, nonzero_params, size_bytes (stored for
    inference: compression.quantization.model_size_bytes), flops (per input, 2 per MAC),
    input_size, and latency at each of `latency_batch_sizes` (none timed for an empty one)."""
    from crossdistill.compression.quantization import model_size_bytes

    latency = [measure_latency(model, input_size, b, threads, input_dtype=input_dtype,
                               progress=None if label is None else f"timing {label} (batch {b})").as_dict()
               for b in latency_batch_sizes]
    return {
        "params": count_params(model),
        "nonzero_params": count_nonzero_params(model),
        "size_bytes": model_size_bytes(model)["total"],
        "flops": count_flops(model, input_size, input_dtype),
        "input_size": [int(s) for s in input_size],
        "latency": latency,
    }


def evaluate_for(
    model: nn.Module,
    data: Any,
    info: ModelInfo | str,
    *,
    latency: bool,
    latency_batch_sizes: Sequence[int] = REPORT_LATENCY_BATCHES,
    threads: int | None = None,
    batch_size: int = EVAL_BATCH,
    label: str | None = None,
) -> dict[str, Any]:
    """`evaluate_model` fed as the model expects: normalisation and input size from `info` (a
    `ModelInfo`, or a registered model name to look it up), latency timed at
    `latency_batch_sizes` only when `latency`. The one place that turns a model's info into the
    evaluation's keywords, so a teacher and its student are always measured alike."""
    if isinstance(info, str):
        info = model_info(info)
    return evaluate_model(
        model,
        data,
        mean=info.mean,
        std=info.std,
        input_size=info.input_size,
        measure_speed=latency,
        latency_batch_sizes=tuple(latency_batch_sizes) if latency else (),
        threads=threads,
        batch_size=batch_size,
        label=label,
        output=info.output,
        kind=info.kind,
        input_dtype=info.input_dtype,
    )


def evaluate_pair_for(
    teacher: nn.Module,
    student: nn.Module,
    data: Any,
    info: ModelInfo,
    *,
    latency: bool,
    latency_batch_sizes: Sequence[int] = REPORT_LATENCY_BATCHES,
    batch_size: int = EVAL_BATCH,
    label: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`evaluate_for` of a teacher and of its student, and their agreement (evaluation_agreement),
    from one forward pass of each model over `data`: the test set is the longest part of a
    compression run's report, and scoring each model and then comparing them ran it four times.
    `label` shows progress bars on stderr."""
    from crossdistill.evaluation_agreement import compare

    _top1_kind(info.kind)
    x, y = _check_images(*_arrays(data), info.mean, info.std)
    batches = ((to_tensor(x[s], info.mean, info.std), torch.from_numpy(np.asarray(y[s], dtype=np.int64)))
               for s in batch_slices(len(x), batch_size))
    with progress_bar("evaluating teacher and student" if label else None, len(x), "img") as bar:
        t_scores, s_scores, agreement = compare(teacher, student, batches, output=info.output, kind=info.kind,
                                                progress=bar)
    assert t_scores is not None and s_scores is not None  # every batch carries labels
    sizes = tuple(latency_batch_sizes) if latency else ()
    measured = [{"top1": scores["top1"], "n_eval": int(len(y)),
                 **size_and_speed(model, info.input_size, sizes, label=name if label else None,
                                  input_dtype=info.input_dtype)}
                for model, scores, name in ((teacher, t_scores, "teacher"), (student, s_scores, "student"))]
    return measured[0], measured[1], {**agreement, "n_eval": int(len(y))}
