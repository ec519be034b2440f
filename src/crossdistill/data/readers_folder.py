"""The image-folder reader: one subfolder of PNG/JPEG/... files per class, as a user keeps a few
images per class.

`FOLDER/<class>/*.png` is one split (like an .npz); `FOLDER/train/<class>/...` and
`FOLDER/test/<class>/...` hold both, and then both take their classes from `train/`, so that a
class missing from the test images cannot shift the labels (also when `FOLDER/test` itself is
given). A folder with train/ and test/ of classes is one of splits whatever lies beside them
(other folders are named in a warning, not read; val/ is passed over quietly); with train/ alone,
it is one of splits unless a folder beside it holds images itself (then `train` is a class, as
beside `bus/` and `tram/`). Which files are classes and images: `folder_files`; how they are
decoded (RGB, or one channel when every image of the class folders of both splits is
grayscale; the data says which images made it RGB): `folder_pixels`. Images must all have one
size, unless a `size` is given: then each is scaled so that it just covers size × size (its
shorter side to `size` for a square; `size` is (height, width) for another shape) and
centre-cropped (`crossdistill pack` writes the result as an .npz, so that the exact pixels of a
run can be kept and reused).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from crossdistill.errors import CrossDistillError, outside_stacklevel

from .arrays import ImageArrays
from .folder_files import (
    IMAGE_SUFFIXES,
    SkippedFilesWarning,
    class_folders,
    holds_images,
    images_directly_in,
    images_in,
    is_class_root,
    nfc,
    subfolders,
    warn_skipped,
)
from .folder_pixels import Decoded, check_fits_memory, colour_note, decode_all, height_width, modes, unreadable_error

SPLIT_FOLDERS = ("train", "test")
# Folders beside train/ and test/ that are splits too, passed over without a word (an unused val/).
OTHER_SPLITS = ("val", "valid", "validation")


class ClassOrderWarning(UserWarning):
    """Class folders named by numbers, numbered in the order of their names as text."""


def _warn_numeric_order(root: Path, classes: list[str]) -> None:
    """Folders 1 ... 10 are classes 1, 10, 2, ... (sorted as text, as torchvision's ImageFolder
    numbers them): right for a model trained on such a folder, silently wrong for one trained
    with the numbers as labels."""
    if len(classes) < 2 or not all(c.isascii() and c.isdigit() for c in classes):
        return
    by_number = sorted(classes, key=int)
    if by_number == classes:
        return
    width = max(len(c) for c in classes)
    warnings.warn(f"{root}: the class folders are numbers, and classes are numbered in the order of their names as "
                  f"text ({', '.join(classes[:4])}, ...: folder {classes[1]!r} is class 1), as torchvision's "
                  "ImageFolder numbers them; if the model's class i is folder i instead, give the folders names "
                  f"that sort as numbers ({by_number[0].zfill(width)}, {by_number[1].zfill(width)}, ...), or the "
                  "order with --classes (classes=)",
                  ClassOrderWarning, stacklevel=outside_stacklevel())


@contextlib.contextmanager
def order_given(given: bool) -> Iterator[None]:
    """Reading while the class order is known otherwise (`--classes`, or the names a saved model
    records): a folder's numbered names need no word about their text order then."""
    with warnings.catch_warnings():
        if given:
            warnings.simplefilter("ignore", ClassOrderWarning)
        yield


def is_image_folder(path: Path) -> bool:
    """A folder of class subfolders holding images, or one with train/ (and test/) such folders."""
    if not path.is_dir():
        return False
    return is_class_root(path) or any((path / s).is_dir() and is_class_root(path / s) for s in SPLIT_FOLDERS)


def _beside_splits(path: Path) -> list[Path]:
    return [sub for sub in subfolders(path) if sub.name not in SPLIT_FOLDERS + OTHER_SPLITS]


def has_splits(path: Path) -> bool:
    """`path` holds train/ (and test/) folders of class subfolders rather than classes: a
    train/ or test/ with no image of its own whose subfolders hold images, whatever lies beside
    it (an `Unsorted/` of loose images read as a class would shift every label without a word;
    a class called `train` that keeps its images only in sub-folders is read as a split instead,
    and refused for its class count)."""
    return any((path / s).is_dir() and not images_directly_in(path / s) and is_class_root(path / s)
               for s in SPLIT_FOLDERS)


def _classes_from_train(root: Path, train: Path) -> list[str]:
    classes = [p.name for p in subfolders(train)]
    known = {nfc(c) for c in classes}
    extra = sorted(name for name in class_folders(root) if name not in known)
    if extra:
        raise CrossDistillError(f"{root}: classes {extra} are not among {train}'s {classes}")
    return classes


def _split_root(path: Path, split: str) -> tuple[Path, list[str], list[Path]]:
    """The folder of `split`, the class names (from train/ when the folder has splits, or when
    it is itself the test/ beside a train/) and the class roots whose images decide gray or RGB
    (only those: a stray file beside the classes or in an unused val/ must not)."""
    if has_splits(path):
        train, root = path / "train", path / split
        if not (train.is_dir() and is_class_root(train)):
            raise CrossDistillError(f"{path}: has {split}/ but no train/ folder of class subfolders, which "
                                    "names the classes (an empty class folder there keeps a class's label)")
        if not root.is_dir():
            raise CrossDistillError(f"{path}: has train/ but no {split}/ folder of class subfolders")
        extra = [sub.name for sub in _beside_splits(path) if holds_images(sub)]
        if extra:
            warnings.warn(f"{path}: {', '.join(f'{e}/' for e in extra)} beside train/ and test/ "
                          f"{'is' if len(extra) == 1 else 'are'} not read", SkippedFilesWarning,
                          stacklevel=outside_stacklevel())
        return root, _classes_from_train(root, train), [path / s for s in SPLIT_FOLDERS if (path / s).is_dir()]
    if not is_class_root(path):
        raise CrossDistillError(f"{path}: no class subfolder holds images ({', '.join(IMAGE_SUFFIXES)})")
    sibling = path.parent / "train"
    if path.name in SPLIT_FOLDERS and path.name != "train" and sibling.is_dir() and is_class_root(sibling):
        # photos/test given alone: its labels must be those of photos/train.
        return path, _classes_from_train(path, sibling), [sibling, path]
    return path, [p.name for p in subfolders(path)], [path]


def _files(root: Path, classes: list[str], skipped: list[Path]) -> list[tuple[Path, int]]:
    """Each image below a class folder of `root` with its class's label. A folder that two
    classes reach (one linked into another class) is refused, since its images would carry both
    labels; files linked one by one may share their target (git-annex, DVC and the Hugging Face
    cache store byte-identical images as links to one file)."""
    folders = class_folders(root)
    out: list[tuple[Path, int]] = []
    owner: dict[str, int] = {}
    for label, name in enumerate(classes):
        def claim(real: str, walked: str, label: int = label) -> None:
            if owner.setdefault(real, label) != label:
                raise CrossDistillError(f"{walked}: also a folder of class {classes[owner[real]]!r} (through a link): "
                                        "an image has one class")

        folder = folders.get(nfc(name))
        out += [(f, label) for f in (images_in(folder, skipped, claim) if folder is not None else [])]
    return out


def _pack_command(path: Path, split: str) -> str:
    option = " --split test" if split == "test" and has_splits(path) else ""
    return f"`crossdistill pack {path}{option} --size HxW --out {split}.npz`"


def read_image_folder(path: str | Path, split: str = "train", *,
                      size: int | tuple[int, int] | None = None) -> ImageArrays:
    """The images of `split` as uint8 N×H×W×C with their class labels (see the module's doc);
    `size`: one side (square) or (height, width) to scale and centre-crop every image to."""
    path = Path(path)
    hw = height_width(size) if size is not None else None
    root, classes, scope = _split_root(path, split)
    _warn_numeric_order(root, classes)
    skipped: list[Path] = []
    files = _files(root, classes, skipped)
    warn_skipped(root, skipped)
    if not files:
        raise CrossDistillError(f"{root}: no images in its class subfolders")
    # One channel count for both splits: a gray test set of an RGB training set stays RGB. The
    # split's own files are listed already; only the other split's are walked for this.
    everything = [f for f, _ in files] + [f for top in scope if top.resolve() != root.resolve()
                                          for sub in subfolders(top) for f in images_in(sub)]
    unreadable: list[str] = []
    colour = modes(everything, unreadable)

    def fits(need: int, shape: tuple[int, ...]) -> None:
        how = ("give a smaller size (--size), or fewer images (a folder of a part of them)" if hw is not None else
               f"give them the model's input size first, e.g. {_pack_command(path, split)}, which scales each image "
               "as it reads it, and use the .npz")
        check_fits_memory(need, f"{root}: the pixels of {len(files)} images of {shape[1]}x{shape[0]}", how)

    decoded: Decoded = decode_all([f for f, _ in files], not colour, hw, fits, unreadable)
    if decoded.unreadable:
        raise unreadable_error(decoded.unreadable)
    if decoded.x is None or len(decoded.sizes) > 1:
        examples = "; ".join(f"{f.relative_to(root)} {s[1]}x{s[0]}" for s, f in decoded.sizes.items())
        raise CrossDistillError(
            f"{root}: the images differ in size (width x height: {examples}); give them one size first, e.g. "
            f"{_pack_command(path, split)} (your model's input height x "
            "width, e.g. 48x64, or one side for a square; scaled to cover it, centre crop), and use the .npz")
    x = decoded.x if decoded.x.ndim == 4 else decoded.x[..., None]
    y = np.asarray([label for _, label in files], dtype=np.int64)
    whole = Path(os.path.commonpath(scope)) if len(scope) > 1 else scope[0]
    return ImageArrays(x=x, y=y, num_classes=len(classes), class_names=classes, source=str(root),
                       note=colour_note(colour, len(everything), whole),
                       files=[str(f.relative_to(root)) for f, _ in files])
