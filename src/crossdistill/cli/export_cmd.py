"""`crossdistill export`: a saved model to ONNX or TorchScript, verified against PyTorch."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from crossdistill.errors import CrossDistillError

# What each format needs beyond the base install (the `export` extra of pyproject.toml).
EXTRA_MODULES = {"onnx": ("onnx", "onnxruntime"), "torchscript": ()}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a compressed model to ONNX or TorchScript (verified against PyTorch)",
        description="Export the model of a `crossdistill compress` run directory (or a .safetensors file "
        "saved by crossdistill.save) to ONNX or TorchScript. The exported file runs the same inputs as the "
        "PyTorch model (the first --n-verify images of --eval-data, else a fixed random batch) and is "
        "written only when the largest absolute logit difference is within --tolerance (scaled by the largest "
        "|logit| when that is above 1).",
    )
    p.add_argument("source", type=Path, help="run directory (holding student.safetensors) or .safetensors file")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="export format")
    p.add_argument("--out", type=Path, help="output file (default: beside the source, student.onnx / student.torchscript.pt)")
    p.add_argument("--eval-data", dest="eval_data",
                   help="verify on real test images: .npz, a folder of class subfolders of images, "
                        "cifar-10-batches-py folder, Fashion-MNIST folder or a data-set name")
    p.add_argument("--n-verify", dest="n_verify", type=int, default=64, help="images used to verify (default 64)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest allowed |logit difference|, times the largest |logit| when that is above 1 "
                        "(default 1e-4; 1e-2 for a model saved in float16, 5e-2 in bfloat16)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--model", help="model name, only for weight files that do not record it; or, for a model of "
                   "your own whose factory file has moved, path/to/file.py:function to rebuild it")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def check_extra(fmt: str) -> None:
    """Refuse, with the install command, a format whose optional packages are missing."""
    import importlib

    for module in EXTRA_MODULES.get(fmt, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            raise CrossDistillError(f"{fmt} export needs the package {module!r}, which is not installed: "
                                    "pip install 'crossdistill[export]'") from None


def run(args: argparse.Namespace) -> int:
    from crossdistill.export import default_output, export
    from crossdistill.outputs import output_lock

    if args.n_verify < 1:
        raise CrossDistillError(f"--n-verify must be >= 1, got {args.n_verify}")
    if args.tolerance is not None and (not math.isfinite(args.tolerance) or args.tolerance < 0):
        raise CrossDistillError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    if args.opset < 9:
        raise CrossDistillError(f"--opset must be >= 9, got {args.opset}")
    check_extra(args.format)
    out = args.out if args.out is not None else default_output(args.source, args.format)
    # Claimed for the whole export: two exports to one file cannot silently replace each other.
    with output_lock(out, args.force):
        res = export(args.source, args.format, out, eval_data=args.eval_data, n_verify=args.n_verify,
                     tolerance=args.tolerance, force=args.force, model_name=args.model, opset=args.opset)
    print(f"exported {args.source} to {res.path} ({res.format}, {res.bytes:,} bytes)")
    print(f"verified on {res.inputs}: max |logit difference| vs PyTorch = {res.max_abs_diff:.3g} "
          f"(tolerance {res.tolerance:g})")
    if res.format == "onnx":
        free = ", ".join(("batch", *res.free_axes))
        print(f"free input axes: {free}" + (" (verified at a second size too)" if res.free_axes else
                                            " (size fixed at the model's input size)"))
    if res.note:
        print(res.note)
    return 0
