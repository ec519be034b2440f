"""Test labels in the training data's class order, when both name their classes; training data
whose named classes cannot be the model's."""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Sequence

import numpy as np

from crossdistill.errors import CrossDistillError
from crossdistill.params import names_a_file

from .arrays import ImageArrays
from .readers_common import CIFAR10_CLASSES
from .folder_files import nfc


def align_classes(test: ImageArrays, names: Sequence[str] | None, known_as: str = "the training data") -> ImageArrays:
    """`test` with its labels renumbered to the training data's classes `names`, by name. Two
    folders or .npz files read separately each number their own classes: a test set that lacks
    one of them would otherwise have every later label shifted by one, and be scored against the
    wrong classes. Without names on both sides the labels are taken as they are. Names are
    compared in Unicode NFC (a folder copied from macOS stores them decomposed). `known_as`: whose
    names `names` are, for the refusal."""
    if names is None or test.class_names is None or list(names) == list(test.class_names):
        return test
    index = {nfc(name): i for i, name in enumerate(names)}
    extra = sorted(name for name in test.class_names if nfc(name) not in index)
    if extra:
        hint = ""
        source = str(test.source).lower().replace("-", "")
        if sorted(test.class_names) == sorted(CIFAR10_CLASSES) and ".npz" in source and "cifar" in source:
            hint = ("; an .npz of 10 classes named cifar* without class_names is read with CIFAR-10's names: save "
                    "class_names in it to name its classes otherwise")
        raise CrossDistillError(f"{test.source or 'test data'}: classes {extra} that {known_as} does not "
                                f"have (its classes: {list(names)}){hint}")
    mapping = np.asarray([index[nfc(name)] for name in test.class_names], dtype=np.int64)
    return dataclasses.replace(test, y=mapping[test.y], num_classes=len(names), class_names=list(names))


def class_list(classes: Sequence[str]) -> list[str]:
    """`classes` as given (`--classes a b c`), or read from a file when it is one name that names
    a file: one class a line, blank lines left out (a thousand ImageNet ids are not typed)."""
    from pathlib import Path

    if isinstance(classes, os.PathLike):
        classes = [os.fspath(classes)]
    if isinstance(classes, str):  # a file, or names separated by commas (a name may hold spaces)
        classes = [classes] if names_a_file(classes) else [c.strip() for c in classes.split(",") if c.strip()]
    names = [str(c) for c in classes]
    if len(names) == 1 and Path(names[0]).is_dir():
        # One class named like a folder that exists here: meant as the data, or a list, not a class.
        raise CrossDistillError(f"classes: {names[0]} is a folder; give a file of class names (one a line) or the "
                                "names themselves")
    if len(names) == 1 and names_a_file(names[0]):
        try:
            text = Path(names[0]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CrossDistillError(f"{names[0]}: cannot read the class list ({exc})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise CrossDistillError(f"{classes[0]}: the class list is empty")
    folded = Counter(nfc(n) for n in names)
    doubled = sorted({n for n in names if folded[nfc(n)] > 1})
    if doubled:
        raise CrossDistillError(f"classes: {doubled} given twice; each class once, in the model's order")
    return names


def renumbering(data_names: Sequence[str] | None, classes: Sequence[str], where: str) -> tuple[list[str], np.ndarray]:
    """The class list `classes` (`--classes`) and, for each of the data's own labels, its label
    in that list: the model's order where it is not the data's (a folder's sorted names against a
    model trained on another order)."""
    names = class_list(classes)
    if data_names is None:
        raise CrossDistillError(f"{where}: classes are given by name, but the data names none (give a folder of "
                                "class subfolders, or an .npz with class_names)")
    index = {nfc(name): i for i, name in enumerate(names)}
    unknown = [n for n in data_names if nfc(n) not in index]
    if unknown:
        raise CrossDistillError(f"{where}: classes {unknown} are not in the class list ({len(names)} names: "
                                f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''})")
    return names, np.asarray([index[nfc(name)] for name in data_names], dtype=np.int64)


def order_classes(data: ImageArrays, classes: Sequence[str]) -> ImageArrays:
    """`data` with its labels numbered by the class list `classes` (`renumbering`)."""
    names, mapping = renumbering(data.class_names, classes, data.source or "training data")
    return dataclasses.replace(data, y=mapping[data.y], num_classes=len(names), class_names=names)


def check_named_classes(names: Sequence[str] | None, num_classes: int, source: str = "training data",
                        labels: np.ndarray | None = None, listed: bool = False) -> None:
    """Refuse training data that names another number of classes than the model predicts: its
    classes are numbered in sorted-name order (a folder's subfolders), so one missing name shifts
    every label after it, and one extra (an `Unsorted` folder, a copy's leftovers) every label
    before it, and every score and the few-shot draw would be silently wrong. `labels` name the
    classes without images, the likely extra ones."""
    if names is None or len(names) == num_classes:
        return
    names = list(names)
    if listed:  # the names are the class list given (--classes), not the data's folders
        raise CrossDistillError(f"the class list (--classes, classes=) names {len(names)} classes for a model that "
                                f"predicts {num_classes}: give its classes in the order of its outputs, one each")
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    if len(names) < num_classes:
        raise CrossDistillError(
            f"{source}: {len(names)} classes ({shown}) for a model that predicts {num_classes}: "
            "classes are numbered by their sorted names, so a missing one shifts every label after it; give every "
            "class in the model's order (an empty folder for a class without images)")
    extra = len(names) - num_classes
    # Folders without images are the likely extra ones; where every folder holds images, which
    # are not the model's cannot be told, and naming the last would blame a real class.
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names)) if labels is not None else None
    unused = [repr(n) for n, c in zip(names, counts) if c == 0] if counts is not None else []
    if unused:
        which = f"; without images: {', '.join(unused[:6])}{', ...' if len(unused) > 6 else ''}"
    elif counts is not None and len(names) <= 12:
        which = "; images per class: " + ", ".join(f"{n} {int(c)}" for n, c in zip(names, counts))
    else:
        which = ""
    raise CrossDistillError(
        f"{source}: {len(names)} classes ({shown}) for a model that predicts {num_classes}: classes are numbered by "
        f"their sorted names, so an extra one shifts the labels of every class after it{which}; remove the "
        f"{extra} folder{'s' * (extra > 1)} that {'are' if extra > 1 else 'is'} not the model's classes, or give "
        "the model's classes with --classes (classes=)")
