"""Decoding an image folder's files into one uint8 array.

Images are decoded with Pillow and turned upright by their EXIF orientation; 16-bit ones are
scaled to 8 bits; float pixels are refused (they have no fixed scale); an alpha channel is
dropped. Every broken file is named in one error, and a folder whose pixels would not fit in the
memory free is refused after its first image rather than killed by the kernel.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from crossdistill.errors import CrossDistillError

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Pillow's many errors for a missing, truncated or foreign file as one that names it."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CrossDistillError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def image_mode(path: Path) -> str:
    from PIL import Image

    with reading(path), Image.open(path) as im:  # the header only: nothing decoded
        return im.mode


def open_image(path: Path, gray: bool):  # -> PIL.Image.Image, mode L or RGB
    from PIL import Image, ImageOps

    with reading(path), Image.open(path) as im:
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


def resize_crop(im, height: int, width: int):  # PIL image in, PIL image out
    """Scaled just enough to cover height × width, then the centre cut out."""
    from PIL import Image

    w, h = im.size
    scale = max(height / h, width / w)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - width) // 2, (nh - height) // 2
    return im.crop((left, top, left + width, top + height))


def height_width(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) < 1:
        raise CrossDistillError(f"image size must be one side or (height, width), each >= 1, got {size}")
    return hw  # type: ignore[return-value]


def available_bytes() -> int | None:
    """Memory the kernel says a new allocation can have (Linux's MemAvailable), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(b: float) -> str:
    return f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def check_fits_memory(need: int, what: str, how: str) -> None:
    """Refuse an allocation of `need` bytes that the memory free cannot hold: the process would
    be killed unannounced. `what`: the data, `how`: what to do instead."""
    free = available_bytes()
    if free is None or need <= 0.8 * free:
        return
    raise CrossDistillError(f"{what} take {_size(need)}, more than the {_size(free)} of memory free: {how}")


@dataclass
class Decoded:
    """The pixels of every file, or why there are none: the broken files, or two sizes."""

    x: np.ndarray | None = None
    unreadable: list[str] = field(default_factory=list)
    sizes: dict[tuple[int, ...], Path] = field(default_factory=dict)  # shape -> its first file


def modes(files: Sequence[Path], unreadable: list[str]) -> list[tuple[Path, str]]:
    """The colour files among `files` (path, mode) from their headers; broken ones go to `unreadable`."""
    colour = []
    for f in files:
        try:
            mode = image_mode(f)
        except CrossDistillError as exc:
            unreadable.append(str(exc))
            continue
        if mode not in GRAY_MODES:
            colour.append((f, mode))
    return colour


def decode_all(files: Sequence[Path], gray: bool, hw: tuple[int, int] | None, fits: Callable[[int, tuple[int, ...]], None],
               unreadable: list[str]) -> Decoded:
    """One array filled in place (a list of images and np.stack would hold every pixel twice);
    `fits(bytes, shape)` is asked before it is made. Once a file is broken the rest are only
    opened to find the other broken ones; a second size stops the decoding."""
    out = Decoded(unreadable=unreadable)
    if hw is not None:
        # The size asked for is known before any file: 100000x100000 was resized (30 GB for the
        # first image alone) before the check below could run, and the process was killed.
        fits(len(files) * hw[0] * hw[1] * (1 if gray else 3), (hw[0], hw[1], 1 if gray else 3))
    for i, f in enumerate(files):
        try:
            im = open_image(f, gray)
        except CrossDistillError as exc:
            if str(exc) not in out.unreadable:
                out.unreadable.append(str(exc))
            continue
        if out.unreadable:
            continue
        if hw is not None:
            im = resize_crop(im, *hw)
        a = np.asarray(im, dtype=np.uint8)
        out.sizes.setdefault(a.shape, f)
        if len(out.sizes) > 1:
            return out
        if out.x is None:
            fits(len(files) * a.nbytes, a.shape)
            out.x = np.empty((len(files),) + a.shape, np.uint8)
        out.x[i] = a
    return out


def unreadable_error(unreadable: list[str]) -> CrossDistillError:
    if len(unreadable) == 1:
        return CrossDistillError(unreadable[0])
    more = f" (and {len(unreadable) - 5} more)" if len(unreadable) > 5 else ""
    return CrossDistillError(f"{len(unreadable)} files are not readable images{more}: " + "; ".join(unreadable[:5])
                             + "; remove or replace them")


def colour_note(colour: list[tuple[Path, str]], n: int, whole: Path) -> str:
    """Why a folder of mostly gray images was read as RGB: one stray colour file does that."""
    if not colour or len(colour) == n:
        return ""
    shown = ", ".join(f"{f.relative_to(whole)} ({mode})" for f, mode in colour[:3])
    more = ", ..." if len(colour) > 3 else ""
    verb = "is" if len(colour) == 1 else "are"
    return (f"{len(colour)} of the folder's {n} images {verb} not grayscale ({shown}{more}), so all of them were "
            "read as RGB")
