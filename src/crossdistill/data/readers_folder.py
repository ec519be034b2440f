"""The image-folder reader: one subfolder of PNG/JPEG/... files per class, as a user keeps a few
images per class.

`FOLDER/<class>/*.png` is one split (like an .npz); `FOLDER/train/<class>/...` and
`FOLDER/test/<class>/...` hold both, and then both take their classes from `train/`, so that a
class missing from the test images cannot shift the labels. Classes are the subfolder names in
sorted order (an empty subfolder is still a class: its index stays where the model expects it).
Images are decoded with Pillow: RGB, or one channel when every image is grayscale; an alpha
channel is dropped. They must all have one size, unless a `size` is given: then each is scaled
so that its shorter side is `size` and centre-cropped to size × size (`crossdistill pack` writes
the result as an .npz, so that the exact pixels of a run can be kept and reused).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_FOLDERS = ("train", "test")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _is_class_root(path: Path) -> bool:
    return any(_images_in(sub) for sub in _subfolders(path))


def is_image_folder(path: Path) -> bool:
    """A folder of class subfolders holding images, or one with train/ (and test/) such folders."""
    if not path.is_dir():
        return False
    return _is_class_root(path) or any((path / s).is_dir() and _is_class_root(path / s) for s in SPLIT_FOLDERS)


def _split_root(path: Path, split: str) -> tuple[Path, list[str]]:
    """The folder of `split` and the class names (from train/ when the folder has splits)."""
    train = path / "train"
    if train.is_dir() and _is_class_root(train):
        root = path / split
        if not root.is_dir():
            raise CrossDistillError(f"{path}: has train/ but no {split}/ folder of class subfolders")
        classes = [p.name for p in _subfolders(train)]
        extra = sorted({p.name for p in _subfolders(root)} - set(classes))
        if extra:
            raise CrossDistillError(f"{root}: classes {extra} are not among train/'s {classes}")
        return root, classes
    if not _is_class_root(path):
        raise CrossDistillError(f"{path}: no class subfolder holds images ({', '.join(IMAGE_SUFFIXES)})")
    return path, [p.name for p in _subfolders(path)]


def _files(root: Path, classes: list[str]) -> Iterator[tuple[Path, int]]:
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            for f in _images_in(folder):
                yield f, label


def _open(path: Path):  # -> PIL.Image.Image
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if im.mode not in ("P", "PA") else im.convert("RGBA")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CrossDistillError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _resize_crop(im, size: int):  # PIL image in, PIL image out
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def read_image_folder(path: str | Path, split: str = "train", *, size: int | None = None) -> ImageArrays:
    """The images of `split` as uint8 N×H×W×C with their class labels (see the module's doc)."""
    path = Path(path)
    if size is not None and size < 1:
        raise CrossDistillError(f"image size must be >= 1, got {size}")
    root, classes = _split_root(path, split)
    files = list(_files(root, classes))
    if not files:
        raise CrossDistillError(f"{root}: no images in its class subfolders")
    images = [_open(f) for f, _ in files]
    gray = all(im.mode in _GRAY_MODES for im in images)
    arrays = []
    for (f, _), im in zip(files, images):
        im = im.convert("L" if gray else "RGB")
        if size is not None:
            im = _resize_crop(im, size)
        arrays.append(np.asarray(im, dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        by_shape: dict[tuple[int, ...], Path] = {}
        for (f, _), a in zip(files, arrays):
            by_shape.setdefault(a.shape, f)
        examples = "; ".join(f"{f.relative_to(root)} {s[1]}x{s[0]}" for s, f in list(by_shape.items())[:3])
        raise CrossDistillError(
            f"{root}: the images differ in size (width x height: {examples}); give them one size first, e.g. "
            f"`crossdistill pack {path} --size 224 --out images.npz` (shorter side to 224, centre crop), "
            "and use the .npz")
    x = np.stack(arrays)
    if x.ndim == 3:
        x = x[..., None]
    y = np.asarray([label for _, label in files], dtype=np.int64)
    return ImageArrays(x=x, y=y, num_classes=len(classes), class_names=classes, source=str(root))
