"""The demo's teacher: its training recipe and the training itself."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.data import ImageArrays, to_tensor
from crossdistill.errors import CrossDistillError

# Bump when the training code changes in a way that makes older cached teachers different.
TEACHER_FORMAT = 1


@dataclass(frozen=True)
class TeacherRecipe:
    """How the demo teacher is trained. Its hash (with the training data's) names the cache entry.

    SGD with Nesterov momentum and a one-cycle schedule reaches about 90 % test accuracy on
    Fashion-MNIST with `fashion_cnn` in two epochs; a constant rate needs several more.
    """

    model: str = "fashion_cnn"
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.1  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def validate(self) -> "TeacherRecipe":
        if self.epochs < 1:
            raise CrossDistillError(f"--epochs: the teacher trains for 1 epoch or more, got {self.epochs}")
        if self.batch_size < 1:
            raise CrossDistillError(f"teacher training needs a batch size >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise CrossDistillError(f"learning rate must be positive, got {self.lr}")
        return self

    def key(self, data_fingerprint: str) -> str:
        from crossdistill.models import create_model

        # The architecture's tensor shapes are part of the key: a model whose default widths
        # change gets a new teacher instead of silently reusing the old network.
        arch = [[k, list(v.shape)] for k, v in create_model(self.model).state_dict().items()]
        text = json.dumps({"recipe": asdict(self), "data": data_fingerprint, "arch": arch, "format": TEACHER_FORMAT},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(data: ImageArrays) -> str:
    """sha256 of the pixels and labels: the same images give the same cached teacher, wherever
    they were read from (Debian package, download, a copy)."""
    h = hashlib.sha256(np.ascontiguousarray(data.x).tobytes())
    h.update(np.asarray(data.y, dtype=np.int64).tobytes())
    return h.hexdigest()


def train_teacher(train: ImageArrays, recipe: TeacherRecipe, *, show_progress: bool = True) -> nn.Module:
    """Train `recipe.model` from scratch on `train`; deterministic for a given recipe and data."""
    from crossdistill.models import create_model, model_info
    from crossdistill.progress import progress_bar

    recipe.validate()
    info = model_info(recipe.model)
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.model, num_classes=train.num_classes)
    x = to_tensor(train.x, info.mean, info.std)
    y = torch.as_tensor(train.y, dtype=torch.long)
    steps_per_epoch = math.ceil(len(y) / recipe.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                          weight_decay=recipe.weight_decay)
    total = steps_per_epoch * recipe.epochs
    # One-cycle needs a few steps per phase (it divides by the warm-up length); tiny runs keep lr.
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=0.25)
             if total >= 8 else None)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()
    # Left on the screen when done: its last line holds the final epoch's loss and accuracy.
    bar = progress_bar(f"training {recipe.model} teacher" if show_progress else None, total, "batch",
                       delay=0, leave=True)
    try:
        for epoch in range(recipe.epochs):
            perm = torch.randperm(len(y), generator=gen)
            correct = seen = 0
            for start in range(0, len(y), recipe.batch_size):
                idx = perm[start:start + recipe.batch_size]
                logits = model(x[idx])
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                correct += int((logits.argmax(1) == y[idx]).sum())
                seen += len(idx)
                bar.update(1)
                bar.set_postfix_str(f"epoch {epoch + 1}/{recipe.epochs} loss {loss.item():.3f} "
                                    f"train acc {100.0 * correct / seen:.1f} %", refresh=False)
    finally:
        bar.close()
    return model.eval()
