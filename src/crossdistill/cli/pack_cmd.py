"""`crossdistill pack`: a folder of images per class into the .npz every command reads."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from crossdistill.errors import CrossDistillError


def _size(text: str) -> int | tuple[int, int]:
    # One token (`224`, `48x64`): an option of several numbers would swallow the folder after it.
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give one side (224) or height x width (48x64)")
    sides = [int(p) for p in parts]
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="pack a folder of images (one subfolder per class) into an .npz, optionally resized",
        description="Read FOLDER/<class>/*.png|jpg|... (or FOLDER/train/<class>/... with --split) and write "
        "one .npz with x (uint8 N×H×W×C), y, class_names and num_classes: the exact pixels a run reads, "
        "kept in one file. Classes are the subfolder names in sorted order (with train/ and test/, both "
        "take train/'s), or the order --classes gives. A folder whose images already share one size can also be given to --data "
        "directly; --size makes them one size: --size S scales the shorter side to S (bicubic) and crops the "
        "centre S×S, --size HxW (e.g. 48x64) scales each image just enough to cover H×W and crops the centre.",
    )
    p.add_argument("folder", type=Path, help="folder of class subfolders (or with train/ and test/ inside)")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")
    p.add_argument("--size", type=_size, metavar="S | HxW",
                   help="the size the images are scaled and centre-cropped to: one side for squares, or height x "
                   "width, e.g. 48x64 (your model's input size, as --input-size C H W gives them)")
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="with train/ and test/ inside FOLDER: which one (default train)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="the classes in the order the labels should number them, by their folder names, or one file "
                        "of them, a name a line (default: the folders' sorted names)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdistill.data.align import order_classes
    from crossdistill.data.readers_folder import has_splits, order_given, read_image_folder
    from crossdistill.outputs import output_lock
    from crossdistill.persistence.files import atomic_write

    if args.out.suffix.lower() != ".npz":
        raise CrossDistillError(f"--out {args.out}: give a file name ending in .npz")
    if not args.folder.is_dir():
        raise CrossDistillError(f"{args.folder}: no such folder")
    if args.out.is_dir():
        raise CrossDistillError(f"--out {args.out} is a folder; give the .npz file to write")
    if args.split == "test" and not has_splits(args.folder):
        raise CrossDistillError(f"--split test: {args.folder} has no train/ and test/ folders; give the test "
                                "folder itself (its classes are then its own subfolders, or train/'s beside it)")
    with output_lock(args.out, args.force) as out:
        with order_given(bool(args.classes)):
            data = read_image_folder(args.folder, args.split, size=args.size)
        data = order_classes(data, args.classes) if args.classes else data

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a bare name
                np.savez_compressed(fh, x=data.x, y=data.y, class_names=np.asarray(data.class_names),
                                    num_classes=np.asarray(data.num_classes))

        atomic_write(out, write)
    n, h, w, c = data.x.shape
    print(f"packed {n} images of {data.num_classes} classes ({h}x{w}, {c} channel{'s' if c > 1 else ''}) "
          f"from {data.source} into {args.out}")
    return 0
