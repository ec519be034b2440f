"""The images the layer-wise solve fits on: the few-shot images, plus random views of them.

Every objective matches the teacher's hidden states, never labels, so any image-like input the
teacher sees is a valid sample of its second moments. With K = 1 the 10 images give a deep
layer's Gram matrix fewer rows than it has columns (8×8 maps × 10 images = 640 rows for d = 576
in ResNet-56's last stage); views of the same images fill it at the cost of a longer capture.
"""
from __future__ import annotations

import numpy as np
import torch

from crossdistill.errors import CrossDistillError
from crossdistill.finetune.views import VIEWS, mix

# Views are drawn from their own stream, apart from the draw's seed itself, so that adding views
# never changes which images were drawn.
_VIEW_STREAM = 7919


def calibration_images(images: torch.Tensor, views: int, policy: str = "affine", mixup: float = 0.0,
                       seed: int = 0) -> torch.Tensor:
    """`images` followed by `views` random views of each (the same for the same seed), as one
    tensor; `images` itself when views is 0. `mixup` > 0 blends each view with another view."""
    if views < 0:
        raise CrossDistillError(f"views must be >= 0, got {views}")
    if views == 0:
        return images
    if policy not in VIEWS:
        raise CrossDistillError(f"unknown views policy {policy!r}; choose from {sorted(VIEWS)}")
    if images.dim() != 4:
        raise CrossDistillError(f"views need images (N, C, H, W); got shape {tuple(images.shape)}")
    from crossdistill.data.folder_pixels import check_fits_memory

    # The views are made at once (one tensor): a million of them filled the memory before any error.
    check_fits_memory(images.element_size() * images.numel() * (views + 1),
                      f"{len(images)} images with {views} views each", "ask for fewer views")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + _VIEW_STREAM)
    rng = np.random.default_rng([seed, _VIEW_STREAM])
    out = [images]
    for _ in range(views):
        v = VIEWS[policy](images, gen)
        if mixup > 0:
            v, _, _ = mix(v, mixup, 0.0, gen, rng)
        out.append(v)
    return torch.cat(out)
