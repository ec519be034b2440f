"""The shared CIFAR-10 data every benchmark uses: the teacher weight files, the training set, and
either the 1000 test images or, for choosing settings without looking at them, train[49000:] as
validation. Scripts import it as `from splits import ...` (Python puts a script's own folder first
on sys.path)."""
from __future__ import annotations

from crossdistill.data import load_image_data
from crossdistill.data.arrays import ImageArrays
from crossdistill.paths import shared_data_dir

VAL_START = 49000
WEIGHTS = {"resnet56": "resnet56-4bfd9763.th", "resnet20": "resnet20-12fca82f.th"}  # under <data>/weights/


def teacher_weights(model: str) -> str:
    """Path of the shared pretrained teacher of `model` (a key of WEIGHTS)."""
    return str(shared_data_dir() / "weights" / WEIGHTS[model])


def cifar10_splits(eval_split: str) -> tuple[ImageArrays, ImageArrays]:
    """(train, eval) with eval = the shared test subset ('test') or train[49000:] ('val')."""
    data = shared_data_dir()
    train = load_image_data(str(data / "cifar10" / "cifar10_train.npz"), "train")
    if eval_split == "test":
        return train, load_image_data(str(data / "cifar10" / "cifar10_test1000.npz"), "test")
    if eval_split != "val":
        raise ValueError(f"eval split must be 'test' or 'val', got {eval_split!r}")
    val = ImageArrays(x=train.x[VAL_START:], y=train.y[VAL_START:], num_classes=train.num_classes,
                      source=f"train[{VAL_START}:]")
    return train, val
