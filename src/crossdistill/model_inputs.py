"""What a model takes: a float batch (images N×C×H×W, signals N×C×L, feature vectors) or integer
token ids (a text model whose `nn.Embedding` turns them into the float inputs its layers are
solved on). The places that make up an input of their own (the first forward pass that reads
what a model returns, FLOPs, latency, re-slimming a loaded model, a random export check) make
it of the model's own kind here."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

FLOAT = "float32"
TOKENS = "int64"


def dtype_name(x: torch.Tensor) -> str:
    """FLOAT for a float batch, TOKENS for integer ids."""
    return FLOAT if x.is_floating_point() else TOKENS


def vocabulary(model: nn.Module | None) -> int:
    """The ids every embedding of `model` accepts: below the smallest table (2 without one)."""
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)] if model is not None else []
    return min(sizes) if sizes else 2


def example(input_size: Sequence[int], n: int = 1, dtype: str = FLOAT, *, model: nn.Module | None = None,
            random: bool = False, generator: torch.Generator | None = None,
            device: torch.device | str | None = None) -> torch.Tensor:
    """A batch of `n` inputs of `input_size`: zeros, or with `random` normal values. Token ids are
    never all 0, the usual padding id (a model that masks its padding may refuse a sentence of
    nothing but padding): fixed ids 1, 2, ... below the model's vocabulary, or random ones."""
    shape = (n, *(int(s) for s in input_size))
    if dtype == TOKENS:
        vocab = vocabulary(model)
        if not random:
            ids = torch.arange(math.prod(shape)) % max(vocab - 1, 1) + min(1, vocab - 1)
            return ids.reshape(shape).to(device or "cpu")
        return torch.randint(0, vocab, shape, generator=generator).to(device or "cpu")
    if not random:
        return torch.zeros(shape, device=device)
    return torch.randn(shape, generator=generator).to(device or "cpu")


def check_token_ids(model: nn.Module, ids: torch.Tensor, role: str) -> None:
    """Refuse ids that no embedding of `model` has a row for (the lookup would fail mid-run)."""
    from crossdistill.errors import CrossDistillError

    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    if sizes and ids.numel() and int(ids.max()) >= max(sizes):
        raise CrossDistillError(f"{role} data: token id {int(ids.max())} is beyond the model's vocabulary (its largest "
                                f"embedding has {max(sizes)} rows, ids 0 ... {max(sizes) - 1})")
