"""The image-folder reader: one subfolder of PNG/JPEG/... files per class, as a user keeps a few
images per class.

`FOLDER/<class>/*.png` is one split (like an .npz); `FOLDER/train/<class>/...` and
`FOLDER/test/<class>/...` hold both, and then both take their classes from `train/`, so that a
class missing from the test images cannot shift the labels (also when `FOLDER/test` itself is
given). Classes are the subfolder names in sorted order (an empty subfolder is still a class:
its index stays where the model expects it); the images of a class are every image file below
its folder, nested folders included. Images are decoded with Pillow, turned upright by their
EXIF orientation, 16-bit ones scaled to 8 bits: RGB, or one channel when every image of the
folder (both splits) is grayscale (the data says which images made it RGB); an alpha channel
is dropped. They must all have one size, unless a `size` is given: then each is scaled so that
it just covers size × size (its shorter side to `size` for a square; `size` is (height, width)
for another shape) and centre-cropped (`crossdistill pack` writes the result as an .npz, so
that the exact pixels of a run can be kept and reused).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_FOLDERS = ("train", "test")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _walk_images(folder: Path) -> Iterator[Path]:
    """Image files below `folder` (hidden files and folders left out), as the walk finds them."""
    return (p for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _images_in(folder: Path) -> list[Path]:
    return sorted(_walk_images(folder))


def _is_class_root(path: Path) -> bool:
    # Stops at the first image: detecting the layout must not list a large folder several times.
    return any(next(_walk_images(sub), None) is not None for sub in _subfolders(path))


def is_image_folder(path: Path) -> bool:
    """A folder of class subfolders holding images, or one with train/ (and test/) such folders."""
    if not path.is_dir():
        return False
    return _is_class_root(path) or any((path / s).is_dir() and _is_class_root(path / s) for s in SPLIT_FOLDERS)


def has_splits(path: Path) -> bool:
    """`path` holds train/ (and test/) folders of class subfolders rather than classes."""
    return any((path / s).is_dir() and _is_class_root(path / s) for s in SPLIT_FOLDERS)


def _classes_from_train(root: Path, train: Path) -> list[str]:
    classes = [p.name for p in _subfolders(train)]
    extra = sorted({p.name for p in _subfolders(root)} - set(classes))
    if extra:
        raise CrossDistillError(f"{root}: classes {extra} are not among {train}'s {classes}")
    return classes


def _split_root(path: Path, split: str) -> tuple[Path, list[str], Path]:
    """The folder of `split`, the class names (from train/ when the folder has splits, or when
    it is itself the test/ beside a train/) and the folder whose images decide gray or RGB."""
    if has_splits(path):
        train, root = path / "train", path / split
        if not (train.is_dir() and _is_class_root(train)):
            raise CrossDistillError(f"{path}: has {split}/ but no train/ folder of class subfolders, which "
                                    "names the classes (an empty class folder there keeps a class's label)")
        if not root.is_dir():
            raise CrossDistillError(f"{path}: has train/ but no {split}/ folder of class subfolders")
        return root, _classes_from_train(root, train), path
    if not _is_class_root(path):
        raise CrossDistillError(f"{path}: no class subfolder holds images ({', '.join(IMAGE_SUFFIXES)})")
    sibling = path.parent / "train"
    if path.name in SPLIT_FOLDERS and path.name != "train" and sibling.is_dir() and _is_class_root(sibling):
        # photos/test given alone: its labels must be those of photos/train.
        return path, _classes_from_train(path, sibling), path.parent
    return path, [p.name for p in _subfolders(path)], path


def _files(root: Path, classes: list[str]) -> Iterator[tuple[Path, int]]:
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            for f in _images_in(folder):
                yield f, label


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


def read_image_folder(path: str | Path, split: str = "train", *,
                      size: int | tuple[int, int] | None = None) -> ImageArrays:
    """The images of `split` as uint8 N×H×W×C with their class labels (see the module's doc);
    `size`: one side (square) or (height, width) to scale and centre-crop every image to."""
    path = Path(path)
    hw = _height_width(size) if size is not None else None
    root, classes, whole = _split_root(path, split)
    files = list(_files(root, classes))
    if not files:
        raise CrossDistillError(f"{root}: no images in its class subfolders")
    # One channel count for both splits: a gray test set of an RGB training set stays RGB.
    everything = _images_in(whole)
    colour = [(f, mode) for f, mode in ((f, _mode(f)) for f in everything) if mode not in _GRAY_MODES]
    gray = not colour
    arrays = []
    for f, _ in files:
        im = _open(f, gray)
        if hw is not None:
            im = _resize_crop(im, *hw)
        arrays.append(np.asarray(im, dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        by_shape: dict[tuple[int, ...], Path] = {}
        for (f, _), a in zip(files, arrays):
            by_shape.setdefault(a.shape, f)
        examples = "; ".join(f"{f.relative_to(root)} {s[1]}x{s[0]}" for s, f in list(by_shape.items())[:3])
        option = " --split test" if split == "test" and has_splits(path) else ""
        raise CrossDistillError(
            f"{root}: the images differ in size (width x height: {examples}); give them one size first, e.g. "
            f"`crossdistill pack {path}{option} --size HxW --out {split}.npz` (your model's input height x "
            "width, e.g. 48x64, or one side for a square; scaled to cover it, centre crop), and use the .npz")
    x = np.stack(arrays)
    if x.ndim == 3:
        x = x[..., None]
    y = np.asarray([label for _, label in files], dtype=np.int64)
    return ImageArrays(x=x, y=y, num_classes=len(classes), class_names=classes, source=str(root),
                       note=_colour_note(colour, len(everything), whole))
