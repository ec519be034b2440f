"""The image-folder reader: one subfolder of PNG/JPEG/... files per class, as a user keeps a few
images per class.

`FOLDER/<class>/*.png` is one split (like an .npz); `FOLDER/train/<class>/...` and
`FOLDER/test/<class>/...` hold both (when every subfolder of FOLDER is a split's: train, test,
val, valid, validation; otherwise `train` is a class like any other), and then both take their
classes from `train/`, so that a class missing from the test images cannot shift the labels
(also when `FOLDER/test` itself is given). Classes are the subfolder names (Unicode NFC, as
Linux writes them, whatever macOS stored) in sorted order, as torchvision's ImageFolder numbers
them (an empty subfolder is still a class: its index stays where the model expects it); hidden
folders and macOS's `__MACOSX` are not classes. The images of a class are every image file
below its folder, nested and linked folders included; an image-like file of a type Pillow is
not asked to read (.heic, .avif, a name ending in a space) is named in a warning rather than
passed over in silence, and a folder that cannot be listed is an error. Images are decoded with
Pillow, turned upright by their EXIF orientation, 16-bit ones scaled to 8 bits: RGB, or one
channel when every image of the class folders (both splits) is grayscale (the data says which
images made it RGB); an alpha channel is dropped. They must all have one size, unless a `size` is given: then each is scaled so that
it just covers size × size (its shorter side to `size` for a square; `size` is (height, width)
for another shape) and centre-cropped (`crossdistill pack` writes the result as an .npz, so
that the exact pixels of a run can be kept and reused).
"""
from __future__ import annotations

import contextlib
import os
import unicodedata
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from crossdistill.errors import CrossDistillError, outside_stacklevel

from .arrays import ImageArrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_FOLDERS = ("train", "test")
# Folders beside train/ and test/ that still make FOLDER a folder of splits (an unused val/).
OTHER_SPLITS = ("val", "valid", "validation")
NOT_CLASSES = ("__MACOSX",)  # macOS's zip metadata: resource forks named like the images
# Photos and scans of types that are not read: named in a warning, since a class of iPhone
# HEICs would otherwise look empty.
UNREAD_IMAGE_SUFFIXES = (".heic", ".heif", ".avif", ".jxl", ".jp2", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                         ".orf", ".rw2", ".raw", ".psd", ".exr", ".hdr", ".svg", ".ico", ".tga")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class SkippedFilesWarning(UserWarning):
    """Files below a class folder that look like images but are not read."""


class ClassOrderWarning(UserWarning):
    """Class folders named by numbers, numbered in the order of their names as text."""


def _warn_numeric_order(root: Path, classes: list[str]) -> None:
    """Folders 1 ... 10 are classes 1, 10, 2, ... (sorted as text, as torchvision's ImageFolder
    numbers them): right for a model trained on such a folder, silently wrong for one trained
    with the numbers as labels."""
    if len(classes) < 2 or not all(c.isdigit() for c in classes):
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


def class_name(folder: Path) -> str:
    """A class's name: its folder's, in NFC, so that a folder copied from macOS (which stores
    names decomposed) names the same class as one made on Linux."""
    return unicodedata.normalize("NFC", folder.name)


def _subfolders(path: Path) -> list[Path]:
    try:
        found = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in NOT_CLASSES]
    except OSError as exc:
        raise CrossDistillError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None
    return sorted(found, key=class_name)


def _class_folders(path: Path) -> dict[str, Path]:
    """Class name -> its folder, in the classes' order."""
    folders: dict[str, Path] = {}
    for sub in _subfolders(path):
        name = class_name(sub)
        if name in folders:
            raise CrossDistillError(f"{path}: folders {folders[name].name!r} and {sub.name!r} are one name written "
                                    "two ways (Unicode normalisation): merge them")
        folders[name] = sub
    return folders


def _raise_unlistable(exc: OSError) -> None:
    raise CrossDistillError(f"{exc.filename}: cannot list the folder ({exc.strerror or exc}); its images would be "
                            "left out of their class") from None


def _looks_like_image(path: Path) -> bool:
    """A file of a type not read that is probably an image (named in a warning, not read)."""
    suffix = path.suffix.lower()
    if suffix in UNREAD_IMAGE_SUFFIXES or suffix.rstrip() in IMAGE_SUFFIXES:
        return True
    if suffix:
        return False
    try:  # no extension at all: a camera's or a scraper's image, or a README
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _walk_images(folder: Path, skipped: list[Path] | None = None) -> Iterator[Path]:
    """Image files below `folder` (hidden files and folders left out; linked folders followed,
    each real folder once), as the walk finds them; image-like files not read go to `skipped`."""
    seen: set[str] = set()
    start = os.path.realpath(folder)
    for top, dirs, files in os.walk(folder, onerror=_raise_unlistable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen or start.startswith(real + os.sep):  # a link back up the tree: the class's parents
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(top) / name
            if not path.is_file():
                continue  # a dangling link
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path
            elif skipped is not None and _looks_like_image(path):
                skipped.append(path)


def _images_in(folder: Path, skipped: list[Path] | None = None) -> list[Path]:
    return sorted(_walk_images(folder, skipped))


def _is_class_root(path: Path) -> bool:
    # Stops at the first image: detecting the layout must not list a large folder several times.
    return any(next(_walk_images(sub), None) is not None for sub in _subfolders(path))


def is_image_folder(path: Path) -> bool:
    """A folder of class subfolders holding images, or one with train/ (and test/) such folders."""
    if not path.is_dir():
        return False
    return _is_class_root(path) or any((path / s).is_dir() and _is_class_root(path / s) for s in SPLIT_FOLDERS)


def has_splits(path: Path) -> bool:
    """`path` holds train/ (and test/) folders of class subfolders rather than classes: every
    subfolder is a split's (a class called `train` beside `bus` and `tram` stays a class)."""
    if any(sub.name not in SPLIT_FOLDERS + OTHER_SPLITS for sub in _subfolders(path)):
        return False
    return any((path / s).is_dir() and _is_class_root(path / s) for s in SPLIT_FOLDERS)


def _classes_from_train(root: Path, train: Path) -> list[str]:
    classes = list(_class_folders(train))
    extra = sorted(set(_class_folders(root)) - set(classes))
    if extra:
        raise CrossDistillError(f"{root}: classes {extra} are not among {train}'s {classes}")
    return classes


def _split_root(path: Path, split: str) -> tuple[Path, list[str], list[Path]]:
    """The folder of `split`, the class names (from train/ when the folder has splits, or when
    it is itself the test/ beside a train/) and the class roots whose images decide gray or RGB
    (only those: a stray file beside the classes or in an unused val/ must not)."""
    if has_splits(path):
        train, root = path / "train", path / split
        if not (train.is_dir() and _is_class_root(train)):
            raise CrossDistillError(f"{path}: has {split}/ but no train/ folder of class subfolders, which "
                                    "names the classes (an empty class folder there keeps a class's label)")
        if not root.is_dir():
            raise CrossDistillError(f"{path}: has train/ but no {split}/ folder of class subfolders")
        return root, _classes_from_train(root, train), [path / s for s in SPLIT_FOLDERS if (path / s).is_dir()]
    if not _is_class_root(path):
        raise CrossDistillError(f"{path}: no class subfolder holds images ({', '.join(IMAGE_SUFFIXES)})")
    sibling = path.parent / "train"
    if path.name in SPLIT_FOLDERS and path.name != "train" and sibling.is_dir() and _is_class_root(sibling):
        # photos/test given alone: its labels must be those of photos/train.
        return path, _classes_from_train(path, sibling), [sibling, path]
    return path, list(_class_folders(path)), [path]


def _files(root: Path, classes: list[str], skipped: list[Path]) -> Iterator[tuple[Path, int]]:
    folders = _class_folders(root)
    for label, name in enumerate(classes):
        if name in folders:
            for f in _images_in(folders[name], skipped):
                yield f, label


def _warn_skipped(root: Path, skipped: list[Path]) -> None:
    if not skipped:
        return
    shown = ", ".join(repr(str(f.relative_to(root))) for f in skipped[:4]) + (", ..." if len(skipped) > 4 else "")
    warnings.warn(f"{root}: {len(skipped)} file{'s' * (len(skipped) != 1)} that look like images {'were' if len(skipped) != 1 else 'was'} "
                  f"not read ({shown}): convert them to PNG or JPEG, or name them with one of "
                  f"{', '.join(IMAGE_SUFFIXES)}", SkippedFilesWarning, stacklevel=outside_stacklevel())


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Pillow's many errors for a missing, truncated or foreign file as one that names it."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CrossDistillError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _mode(path: Path) -> str:
    from PIL import Image

    with _reading(path), Image.open(path) as im:  # the header only: nothing decoded
        return im.mode


def _colour_note(colour: list[tuple[Path, str]], n: int, whole: Path) -> str:
    """Why a folder of mostly gray images was read as RGB: one stray colour file does that."""
    if not colour or len(colour) == n:
        return ""
    shown = ", ".join(f"{f.relative_to(whole)} ({mode})" for f, mode in colour[:3])
    more = ", ..." if len(colour) > 3 else ""
    verb = "is" if len(colour) == 1 else "are"
    return (f"{len(colour)} of the folder's {n} images {verb} not grayscale ({shown}{more}), so all of them were "
            "read as RGB")


def _open(path: Path, gray: bool):  # -> PIL.Image.Image, mode L or RGB
    from PIL import Image, ImageOps

    with _reading(path), Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)  # a phone's portrait photo stored sideways
    if im.mode == "F":
        # convert() clips floats to 0..255, so a [0, 1] image would come out black.
        raise CrossDistillError(f"{path}: 32-bit float pixels (mode F) have no fixed scale: save the image with 8- "
                                "or 16-bit pixels")
    if im.mode == "I" and np.asarray(im).max(initial=0) > 65535:
        raise CrossDistillError(f"{path}: 32-bit integer pixels above 65535: save the image with 8- or 16-bit pixels")
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit gray: convert() would clip every value above 255 to white.
        wide = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), "L")
    elif im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    return im.convert("L" if gray else "RGB")


def _resize_crop(im, height: int, width: int):  # PIL image in, PIL image out
    from PIL import Image

    w, h = im.size
    scale = max(height / h, width / w)  # the smallest scaling that covers height × width
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - width) // 2, (nh - height) // 2
    return im.crop((left, top, left + width, top + height))


def _height_width(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) < 1:
        raise CrossDistillError(f"image size must be one side or (height, width), each >= 1, got {size}")
    return hw  # type: ignore[return-value]


def _pack_command(path: Path, split: str) -> str:
    option = " --split test" if split == "test" and has_splits(path) else ""
    return f"`crossdistill pack {path}{option} --size HxW --out {split}.npz`"


def _available_bytes() -> int | None:
    """Memory the kernel says a new allocation can have (Linux's MemAvailable), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_fits_memory(root: Path, path: Path, split: str, need: int, shape: tuple[int, ...], n: int,
                       scaled: bool) -> None:
    """Refuse, before decoding them all, pixels that would not fit in memory: a folder of a
    thousand 12-megapixel photos is 36 GB as pixels, and the process would be killed unannounced."""
    free = _available_bytes()
    if free is None or need <= 0.8 * free:
        return
    how = ("use fewer images (a folder of a part of them)" if scaled else
           f"give them the model's input size first, e.g. {_pack_command(path, split)}, which scales each image as it "
           "reads it, and use the .npz")
    def size(b: int) -> str:
        return f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"

    raise CrossDistillError(f"{root}: {n} images of {shape[1]}x{shape[0]} take {size(need)} as pixels, more "
                            f"than the {size(free)} of memory free: {how}")


def read_image_folder(path: str | Path, split: str = "train", *,
                      size: int | tuple[int, int] | None = None) -> ImageArrays:
    """The images of `split` as uint8 N×H×W×C with their class labels (see the module's doc);
    `size`: one side (square) or (height, width) to scale and centre-crop every image to."""
    path = Path(path)
    hw = _height_width(size) if size is not None else None
    root, classes, scope = _split_root(path, split)
    _warn_numeric_order(root, classes)
    skipped: list[Path] = []
    files = list(_files(root, classes, skipped))
    _warn_skipped(root, skipped)
    if not files:
        raise CrossDistillError(f"{root}: no images in its class subfolders")
    # One channel count for both splits: a gray test set of an RGB training set stays RGB.
    everything = [f for top in scope for sub in _subfolders(top) for f in _images_in(sub)]
    whole = Path(os.path.commonpath(scope)) if len(scope) > 1 else scope[0]
    unreadable: list[str] = []  # every broken file in one message, not one run each
    colour = []
    for f in everything:
        try:
            mode = _mode(f)
        except CrossDistillError as exc:
            unreadable.append(str(exc))
            continue
        if mode not in _GRAY_MODES:
            colour.append((f, mode))
    gray = not colour
    x: np.ndarray | None = None
    by_shape: dict[tuple[int, ...], Path] = {}
    for i, (f, _) in enumerate(files):
        try:
            im = _open(f, gray)
        except CrossDistillError as exc:
            if str(exc) not in unreadable:
                unreadable.append(str(exc))
            continue
        if unreadable:
            continue  # only looking for more broken files now
        if hw is not None:
            im = _resize_crop(im, *hw)
        a = np.asarray(im, dtype=np.uint8)
        by_shape.setdefault(a.shape, f)
        if len(by_shape) > 1:  # the rest is decoded only to name up to three sizes
            if len(by_shape) == 3:
                break
            continue
        if x is None:
            # One array filled in place: a list of images then np.stack would hold every pixel twice.
            _check_fits_memory(root, path, split, len(files) * a.nbytes, a.shape, len(files), hw is not None)
            x = np.empty((len(files),) + a.shape, np.uint8)
        x[i] = a
    if unreadable:
        more = f" (and {len(unreadable) - 5} more)" if len(unreadable) > 5 else ""
        if len(unreadable) == 1:
            raise CrossDistillError(unreadable[0])
        raise CrossDistillError(f"{len(unreadable)} files are not readable images{more}: " + "; ".join(unreadable[:5])
                                + "; remove or replace them")
    if len(by_shape) > 1 or x is None:
        examples = "; ".join(f"{f.relative_to(root)} {s[1]}x{s[0]}" for s, f in list(by_shape.items())[:3])
        raise CrossDistillError(
            f"{root}: the images differ in size (width x height: {examples}); give them one size first, e.g. "
            f"{_pack_command(path, split)} (your model's input height x "
            "width, e.g. 48x64, or one side for a square; scaled to cover it, centre crop), and use the .npz")
    if x.ndim == 3:
        x = x[..., None]
    y = np.asarray([label for _, label in files], dtype=np.int64)
    return ImageArrays(x=x, y=y, num_classes=len(classes), class_names=classes, source=str(root),
                       note=_colour_note(colour, len(everything), whole),
                       files=[str(f.relative_to(root)) for f, _ in files])
