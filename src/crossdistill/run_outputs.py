"""What a run leaves behind: the versions it records, the summary a person reads, and the
files of its output folder.

Moved out of pipeline, which computes the report; `crossdistill.pipeline` re-exports these
names, and the CLI calls `write_run` through it (tests replace it there).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill._version import __version__

from crossdistill.run_types import CompressionResult

def versions() -> dict[str, str]:
    """The versions a result was made with; with the checkout's commit when the library runs from
    a git checkout (a version number alone does not say which code that was)."""
    from crossdistill.sweep.provenance import git_commit

    out = {
        "crossdistill": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        # The CPU's vector kernels torch chose (AVX512, AVX2, DEFAULT): results that amplify
        # rounding (a trained teacher, 2-bit GPTQ) differ with them.
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
    }
    commit = git_commit()
    if commit:
        out["git_commit"] = commit
    return out


def format_summary(report: dict[str, Any]) -> str:
    """A before ⇒ after table a person can read."""
    k = f"K={report['shots']}, " if report.get("shots") is not None else ""  # none with --n-samples
    n_views = (report.get("config") or {}).get("views") or 0
    views = f"; {report.get('calibration_images')} in the solve with {n_views} views each" if n_views else ""
    size = (report.get("teacher") or {}).get("input_size")
    # Signals, features or token ids are no images: the lines below count samples then.
    noun = "images" if size is None or len(size) == 3 else "samples"
    what = (f"baseline {report['baseline']}  {report['method']}" if report.get("baseline")
            else f"{report['method']}  {report['objective']}  {report['solver']}")
    lines = [
        f"{report['model']}  {what}",
        f"few-shot: {report['n_samples']} {noun} ({k}seed {report['seed']}, {report['sampler']}{views}); "
        f"compression took {report['compress_seconds']:.1f} s",
    ]
    ft = report.get("finetune")
    if ft and ft.get("steps") is not None:
        # Often most of the run's seconds: named, with what it did to the few-shot KD loss.
        kd = (f"; few-shot KD loss {ft['before']['kd']:.3g} -> {ft['after']['kd']:.3g}"
              if isinstance(ft.get("before"), dict) and isinstance(ft.get("after"), dict)
              and "kd" in ft["before"] and "kd" in ft["after"] else "")
        # In hints mode the loss trained on is the hints': first and last step, beside the KD check.
        hints = (f"; hint loss {ft['hint_first']:.3g} -> {ft['hint_last']:.3g}"
                 if ft.get("hint_first") is not None and ft.get("hint_last") is not None else "")
        mode = f" ({ft['mode']})" if ft.get("mode") else ""
        lines.append(f"fine-tune{mode}: {ft['steps']} steps in {ft.get('seconds', 0.0):.1f} s, BatchNorm "
                     f"{ft.get('bn', '?')}{hints}{kd}")
    if "teacher" in report:
        t, s = report["teacher"], report["student"]
        lines.append(f"{'':14}{'teacher':>14}{'student':>14}")
        if "top1" in t and "top1" in s:  # no scores without evaluation data: sizes only
            lines.append(f"{'top-1 (%)':14}{t['top1']:>14.2f}{s['top1']:>14.2f}   on {report['n_eval']} test {noun}")
        lines.append(f"{'params':14}{t['params']:>14,}{s['params']:>14,}")
        if s.get("nonzero_params", s["params"]) < s["params"] and "sparsity" in str(report["method"]):
            # Unstructured sparsity keeps dense shapes. (A quantized weight's zero codes are not
            # sparsity: its size is the line below.)
            lines.append(f"{'nonzero':14}{t['nonzero_params']:>14,}{s['nonzero_params']:>14,}")
        size = report.get("model_size")
        if size:
            # Both columns count parameters and BatchNorm statistics alike (a report written
            # before size_bytes had the teacher's parameters alone).
            stored = "packed codes, scales, the rest float32" if size.get("codes") else "float32"
            teacher_bytes = t.get("size_bytes", t["params"] * 4)
            lines.append(f"{'size (KiB)':14}{teacher_bytes / 1024:>14,.1f}{size['total'] / 1024:>14,.1f}   "
                         f"student stored for inference: {stored}")
        lines.append(f"{'MFLOPs':14}{t['flops'] / 1e6:>14.2f}{s['flops'] / 1e6:>14.2f}")
        agree = report.get("agreement")
        if agree and agree.get("top1_agreement") is not None:
            lines.append(f"{'agreement':14}{agree['top1_agreement']:>28.2f}   % of test {noun} with the teacher's class "
                         f"(output error {agree['output_error']:.3g})")
        for lt, ls in zip(t.get("latency", []), s.get("latency", [])):
            label = f"ms (batch {lt['batch_size']})"
            lines.append(f"{label:14}{lt['median_ms']:>14.2f}{ls['median_ms']:>14.2f}   {lt['threads']} "
                         f"thread{'s' * (lt['threads'] != 1)}")
    return "\n".join(lines)


# Config keys that hold paths (a model may be `file.py:factory`).
PATH_KEYS = ("data", "eval_data", "weights", "capture_dir")


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the paths it names that exist from here made absolute: the run folder's
    config.yaml then reruns from any directory (`--config run/config.yaml`), as its saved student
    already records its factory's absolute path. Data-set names and missing paths stay as given."""
    from crossdistill.data.slices import split_slice

    out = dict(config)
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str):
            continue
        sliced = split_slice(value) if key in ("data", "eval_data") else None
        base = sliced[0] if sliced else value  # `train.npz[49000:]`: the file is the path
        if Path(base).exists():
            out[key] = str(Path(base).resolve()) + value[len(base):]
    from crossdistill.models.user import absolute_factory, factory_file

    model = out.get("model")
    path = factory_file(model) if isinstance(model, str) else None
    if path is not None and path.is_file():
        out["model"] = absolute_factory(model)
    return out


def write_run(out: Path, result: CompressionResult, report: dict[str, Any]) -> None:
    """Fill a (temporary) run directory: student weights + spec, report, indices, config."""
    from crossdistill.data.fewshot import save_indices
    from crossdistill.models import save_model
    from crossdistill.outputs import write_json
    import yaml

    save_model(result.student, out / "student.safetensors")
    write_json(out / "report.json", report)
    config = portable_config(report["config"])  # paths absolute: the files are read from anywhere
    # In save_indices's format, so that crossdistill.data.load_indices reads a run's draw back.
    save_indices(out / "fewshot_indices.json", report["fewshot_indices"], {
        "seed": report["seed"], "shots": report["shots"], "data": config["data"],
        **({"files": report["fewshot_files"]} if "fewshot_files" in report else {})})
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (out / "summary.txt").write_text(format_summary(report) + "\n")
