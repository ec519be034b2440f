"""Which files of an image folder are read: class subfolders and the image files below them.

Classes are subfolders in the order of their names as stored, as torchvision's ImageFolder
numbers them; their names are compared in Unicode NFC, so that a folder copied from macOS (which
stores names decomposed) names the same class as one made on Linux. Hidden folders and macOS's
`__MACOSX` are not classes. The images of a class are the image files below its folder, nested
and linked folders included (each real folder once, links back up the tree cut); a folder that
cannot be listed is an error, since its images would silently leave their class.
"""
from __future__ import annotations

import os
import unicodedata
import warnings
from pathlib import Path
from typing import Callable, Iterator

from crossdistill.errors import CrossDistillError, outside_stacklevel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
NOT_CLASSES = ("__MACOSX",)  # macOS's zip metadata: resource forks named like the images
# Photos and scans of types that are not read: named in a warning, since a class of iPhone
# HEICs would otherwise look empty.
UNREAD_IMAGE_SUFFIXES = (".heic", ".heif", ".avif", ".jxl", ".jp2", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                         ".orf", ".rw2", ".raw", ".psd", ".exr", ".hdr", ".svg", ".ico", ".tga")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


class SkippedFilesWarning(UserWarning):
    """Files or folders below an image folder that look like data but are not read."""


def nfc(name: str) -> str:
    """A name as class names are compared: Unicode NFC."""
    return unicodedata.normalize("NFC", name)


def subfolders(path: Path) -> list[Path]:
    """The folders that can be classes, in the order of their names as stored."""
    try:
        found = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in NOT_CLASSES]
    except OSError as exc:
        raise CrossDistillError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None
    return sorted(found, key=lambda p: p.name)


def class_folders(path: Path) -> dict[str, Path]:
    """NFC class name -> its folder, in the classes' order."""
    folders: dict[str, Path] = {}
    for sub in subfolders(path):
        key = nfc(sub.name)
        if key in folders:
            raise CrossDistillError(f"{path}: folders {folders[key].name!r} and {sub.name!r} are one name written "
                                    "two ways (Unicode normalisation): merge them")
        folders[key] = sub
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
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def walk_images(folder: Path, skipped: list[Path] | None = None,
                claim: Callable[[str, str], None] | None = None) -> Iterator[Path]:
    """Image files below `folder` (hidden files and folders left out; linked folders followed,
    each real folder once), as the walk finds them; image-like files not read go to `skipped`;
    `claim(real folder, folder as walked)` is told of each folder walked."""
    seen: set[str] = set()
    start = os.path.realpath(folder)
    for top, dirs, files in os.walk(folder, onerror=_raise_unlistable, followlinks=True):
        real = os.path.realpath(top)
        # A link back up the tree (to the class's parents, or to / itself) would walk them all.
        if real in seen or (real != start and os.path.commonpath([start, real]) == real):
            dirs[:] = []
            continue
        seen.add(real)
        if claim is not None:
            claim(real, top)
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


def images_in(folder: Path, skipped: list[Path] | None = None,
              claim: Callable[[str, str], None] | None = None) -> list[Path]:
    return sorted(walk_images(folder, skipped, claim))


def holds_images(folder: Path) -> bool:
    """Some image file below `folder`; stops at the first (layout checks must not list a large
    folder several times)."""
    return next(walk_images(folder), None) is not None


def is_class_root(path: Path) -> bool:
    """Some subfolder of `path` holds images: `path` is a folder of classes."""
    return any(holds_images(sub) for sub in subfolders(path))


def images_directly_in(folder: Path) -> bool:
    """An image file in `folder` itself, not below it."""
    try:
        return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                   for p in folder.iterdir())
    except OSError:
        return False


def warn_skipped(root: Path, skipped: list[Path]) -> None:
    """One warning naming the image-like files below `root` that were not read."""
    if not skipped:
        return
    one = len(skipped) == 1
    shown = ", ".join(repr(str(f.relative_to(root))) for f in skipped[:4]) + (", ..." if len(skipped) > 4 else "")
    warnings.warn(f"{root}: {len(skipped)} file{'' if one else 's'} that look{'s' if one else ''} like images "
                  f"{'was' if one else 'were'} not read ({shown}): convert them to PNG or JPEG, or name them with "
                  f"one of {', '.join(IMAGE_SUFFIXES)}", SkippedFilesWarning, stacklevel=outside_stacklevel())
