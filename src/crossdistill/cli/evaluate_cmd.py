"""`crossdistill evaluate`: top-1, size, FLOPs and latency of one model on a test set."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

from crossdistill.errors import CrossDistillError


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy, parameters, FLOPs and latency of a (possibly compressed) model",
        description=(
            "Evaluate a model on test images (or signals). Slimmed students load with their base model name: "
            "the architecture is read from the file's saved spec or inferred from its tensor shapes. "
            "A model of your own (compressed with --model path/to/file.py:function) is rebuilt by the "
            "factory its file records, with the input size and normalisation recorded there; your own "
            "trained model itself loads from its factory (--model) and state dict (--weights)."
        ),
    )
    p.add_argument("--model", help="registered model name (optional when the weights file records it); or, for a "
                   "model of your own, path/to/file.py:function: a plain state dict in --weights (your trained "
                   "teacher) loads into what it returns; a saved student whose factory file moved is rebuilt by it")
    p.add_argument("--weights", required=True, help=".th/.pt/.pth (read with weights_only), .safetensors, or a run "
                   "folder of `crossdistill compress` (its student.safetensors)")
    p.add_argument("--eval-data", dest="eval_data", required=True,
                   help="test data: .npz (uint8 images, or float signals N×C×L), a folder of class subfolders "
                        "of images, cifar-10-batches-py folder, "
                        "Fashion-MNIST folder, or 'cifar10'/'fashion-mnist'")
    p.add_argument("--classes", nargs="+", default=None,
                   help="the model's classes in the order of its outputs, by the names the test data gives them "
                        "(a folder's subfolders, an .npz's class_names), or one file of them, a name a line "
                        "(default: the order the model's file records, else the data's own: a folder's sorted names; "
                        "a list that differs from the file's recorded order is refused)")
    p.add_argument("--mean", type=float, nargs="+", default=None,
                   help="your own model from a plain state dict, or a student compressed from tensors through the "
                        "Python API (its file cannot know): per-channel mean subtracted from pixels scaled to "
                        "[0, 1] (default 0 for your own model; other files crossdistill saved record theirs)")
    p.add_argument("--std", type=float, nargs="+", default=None,
                   help="your own model from a plain state dict: per-channel std dividing them (default 1)")
    p.add_argument("--output-key", dest="output_key", default=None,
                   help="your own model from a plain state dict that returns several outputs (a tuple, list, dict "
                        "or named tuple): which holds the logits, a key, field name or index (default: 'logits', "
                        "else the first); files crossdistill saved record theirs")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256, help="images per forward pass (default 256)")
    # Timed by default here (compress times only with --latency); --latency is accepted as the
    # default it is, rather than read by argparse as an abbreviation of --latency-batch-sizes.
    p.add_argument("--latency", dest="no_latency", action="store_false", default=False,
                   help="time the CPU latency (the default for evaluate)")
    p.add_argument("--no-latency", dest="no_latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--latency-batch-sizes", dest="latency_batch_sizes", type=_batch_sizes, default=(1,),
                   help="comma-separated batch sizes to time (default 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads while timing (default: torch's setting)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _accuracy_text(top1: float, n: int) -> str:
    # Show exactly the resolution the test set has: 0.1 points for 1000 images, 0.01 for 10k.
    decimals = max(1, math.ceil(math.log10(max(n, 1))) - 2)
    return f"{top1:.{decimals}f} %"


def format_table(result: dict[str, Any]) -> str:
    """A small human-readable summary of `evaluate_model`'s output plus model/weights/data labels."""
    rows = [
        ("model", f"{result['model']}  ({result['weights']})"),
        ("top-1", f"{_accuracy_text(result['top1'], result['n_eval'])} on {result['n_eval']} images ({result['eval_data']})"),
        # A quantized weight's zero codes are no sparsity: its stored size is the figure.
        ("params", f"{result['params']:,}" + (
            f"  ({result['nonzero_params']:,} non-zero)" if result["nonzero_params"] != result["params"]
            and "model_size" not in result else "")),
        ("FLOPs", f"{result['flops'] / 1e6:,.2f} M per image {tuple(result['input_size'])} (2 per multiply-add)"),
    ]
    if "model_size" in result:
        rows.insert(3, ("size", f"{result['model_size']['total'] / 1024:,.1f} KiB stored for inference (packed codes, "
                                "scales, the rest float32)"))
    for lat in result["latency"]:
        rows.append((
            "latency",
            f"{lat['median_ms']:.2f} ms median (IQR {lat['iqr_ms']:.2f}) at batch {lat['batch_size']}, "
            f"{lat['threads']} thread{'s' if lat['threads'] != 1 else ''}, {lat['device']}",
        ))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _with_normalisation(info: Any, mean: Sequence[float] | None, std: Sequence[float] | None,
                        registered: bool = False) -> Any:
    """A saved model's normalisation: its own, or for a student compressed from tensors (whose file
    cannot know how they were normalised) the --mean/--std given now. `registered`: the model is
    the registry's, read from plain weights (the registry, not the file, knows its normalisation)."""
    if info.mean and info.std:
        if mean is not None or std is not None:
            whose = f"{info.name} is a registered model, normalised as the registry says" if registered else \
                "this file records the normalisation its model expects"
            raise CrossDistillError(f"--mean/--std: {whose} (mean {list(info.mean)}, std {list(info.std)}); "
                                    "leave them out")
        return info
    if mean is None or std is None:
        raise CrossDistillError("this student was compressed from tensors, so its file does not know how pixels "
                                "were normalised for it: give --mean and --std (those your tensors were made with)")
    c = info.input_size[0]
    if len(mean) != c or len(std) != c:
        raise CrossDistillError(f"--mean/--std need one value per input channel ({c})")
    return dataclasses.replace(info, mean=tuple(mean), std=tuple(std))


def run(args: argparse.Namespace) -> int:
    from crossdistill.checks import check_data_fits_model
    from crossdistill.data import load_image_data
    from crossdistill.data.align import check_named_classes, class_list
    from crossdistill.data.folder_files import nfc
    from crossdistill.checks import warn_at_chance, warn_batch_statistics, warn_unnormalised
    from crossdistill.evaluation import evaluate_for
    from crossdistill.models import load_model, load_weights
    from crossdistill.model_inputs import check_file_inputs
    from crossdistill.models.user import build_user_model, infer_info, info_of, is_factory_spec
    from crossdistill.persistence.files import is_crossdistill_file, resolve_model_path

    if args.batch_size < 1:
        raise CrossDistillError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:  # refused even when --no-latency leaves it unused
        raise CrossDistillError(f"threads must be >= 1, got {args.threads}")
    # A run folder is read as `load` and `export` read it: the model file inside.
    weights = resolve_model_path(args.weights) if Path(args.weights).is_dir() else args.weights
    own = args.model is not None and is_factory_spec(args.model) and not is_crossdistill_file(weights)
    if args.output_key is not None and not own:
        raise CrossDistillError("--output-key is for your own model from a plain state dict (--model "
                                "path/to/file.py:function); a file crossdistill saved records its own")
    if own:
        # The user's trained teacher: its factory, its state dict, the input size of the data.
        model = build_user_model(args.model)
        check_file_inputs(model, "float32", args.model)
        load_weights(model, weights)
        data = load_image_data(args.eval_data, "test", classes=args.classes)
        if not data.is_signal:
            warn_unnormalised(args.model, args.mean, args.std)
        info = infer_info(model.eval(), args.model, data.input_shape, mean=args.mean, std=args.std,
                          output=args.output_key)
    else:
        model = load_model(weights, args.model)
        info = info_of(model)  # a registered model's, or what a user's model's file recorded
        check_file_inputs(model, info.input_dtype, str(weights))
        info = _with_normalisation(info, args.mean, args.std, registered=not is_crossdistill_file(weights))
        # Numbered by the classes the model was compressed with, when its file names them.
        recorded = getattr(model, "crossdistill_class_names", None)
        if args.classes and recorded is not None and [nfc(n) for n in class_list(args.classes)] != \
                [nfc(n) for n in recorded]:
            # The file says which output is which class; another order can only score wrongly.
            raise CrossDistillError(f"--classes differs from the classes {weights} records in the order of its outputs "
                                    f"({', '.join(recorded[:6])}{', ...' if len(recorded) > 6 else ''}): leave "
                                    "--classes out, the file's order numbers the test data (a student compressed in "
                                    "another order than its teacher's is compressed again, with --classes)")
        data = load_image_data(args.eval_data, "test", classes=args.classes, align_to=recorded,
                               known_as=f"the model's file ({weights})")
    # The factory given now, where the file's recorded one has moved.
    name = args.model if args.model is not None and is_factory_spec(args.model) else info.name
    spec = model.spec() if callable(getattr(model, "spec", None)) else {"factory": name}
    if info.kind in ("classes", "binary"):
        # A model with no class names of its own numbers a folder's classes by sorted name: one
        # missing folder would shift every label after it.
        check_named_classes(data.class_names, int(spec.get("num_classes", info.num_classes)), str(args.eval_data),
                            data.y, listed=bool(args.classes))
    check_data_fits_model(data, info, num_classes=spec.get("num_classes", info.num_classes), role=str(args.eval_data),
                          scored=True, instead="crossdistill evaluate scores classifiers only")
    result = evaluate_for(model, data, info, latency=not args.no_latency, latency_batch_sizes=args.latency_batch_sizes,
                          threads=args.threads, batch_size=args.batch_size,
                          label=None if args.quiet else "model")
    warn_at_chance(result, info.kind, int(spec.get("num_classes", info.num_classes)), who="the model")
    warn_batch_statistics(model, f"its scores on --batch-size ({args.batch_size}; compress scores in batches of 64)")
    result = {"model": name, "weights": str(args.weights), "eval_data": str(args.eval_data),
              "spec": spec, **result, "eval_batch": args.batch_size}
    if getattr(model, "crossdistill_quant", None):
        from crossdistill.compression.quantization import model_size_bytes

        result["model_size"] = model_size_bytes(model)  # bytes; the figure quantization is for
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
