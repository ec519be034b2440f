"""What a model takes: a float batch (images N×C×H×W, signals N×C×L, feature vectors) or integer
token ids (a text model whose `nn.Embedding` turns them into the float inputs its layers are
solved on). The places that make up an input of their own (the first forward pass that reads
what a model returns, FLOPs, latency, re-slimming a loaded model, a random export check) make
it of the model's own kind here. A forward of several inputs takes them stacked (StackedInputs)."""
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


def parameter_dtypes(model: nn.Module) -> set[torch.dtype]:
    """The floating dtypes of `model`'s parameters."""
    return {p.dtype for p in model.parameters() if p.is_floating_point()}


def for_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float inputs `x` in the floating dtype of `model`'s first parameter, the one its first layer
    reads them with (a student cast with .half() and saved so, its BatchNorms perhaps kept in
    float32, fed float32 images by evaluate or export; float64 arrays from numpy fed to a float32
    model); token ids and a model without float parameters take `x` as it is."""
    first = next((p.dtype for p in model.parameters() if p.is_floating_point()), None) \
        if x.is_floating_point() else None
    return x.to(first) if first is not None else x


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
    # float32 whatever torch's default dtype (a caller's set_default_dtype(float64) is not the model's).
    x = torch.zeros(shape, device=device, dtype=torch.float32) if not random else \
        torch.randn(shape, generator=generator, dtype=torch.float32).to(device or "cpu")
    return for_model(model, x) if model is not None else x


def check_token_ids(model: nn.Module, ids: torch.Tensor, role: str) -> None:
    """Refuse ids that no embedding of `model` has a row for (the lookup would fail mid-run)."""
    from crossdistill.errors import CrossDistillError

    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    if sizes and ids.numel() and int(ids.max()) >= max(sizes):
        raise CrossDistillError(f"{role} data: token id {int(ids.max())} is beyond the model's vocabulary (its largest "
                                f"embedding has {max(sizes)} rows, ids 0 ... {max(sizes) - 1})")


class StackedInputs(nn.Module):
    """A model whose forward takes several inputs of one shape and dtype (token ids and an
    attention mask, two views of an image), fed as one tensor that stacks them on dim 1.

    Everything here (the few-shot draw, capture, fine-tune, evaluation, saving and export) moves
    one tensor of N samples; stacking the inputs makes them travel together, sample by sample.
    `names`: call the model with keywords (`input_ids=..., attention_mask=...`) instead of in
    order. The compressed model is the student's `.model`."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(names, str):  # tuple("ab") would call the model with a= and b=
            from crossdistill.errors import CrossDistillError

            raise CrossDistillError(f"names must be a sequence of the forward's argument names, e.g. "
                                    f"('input_ids', 'attention_mask'), got the string {names!r}")
        self.model = model
        self.names = tuple(names) if names is not None else None

    @staticmethod
    def stack(*inputs: torch.Tensor) -> torch.Tensor:
        """The inputs, each N×..., as one N×k×... tensor (k = how many), checked to agree."""
        from crossdistill.errors import CrossDistillError

        if len(inputs) < 2:
            raise CrossDistillError(f"StackedInputs.stack takes the model's inputs, two or more; got {len(inputs)}")
        tensors = [torch.as_tensor(x) for x in inputs]
        kinds = sorted({(tuple(t.shape), str(t.dtype).replace("torch.", "")) for t in tensors})
        if len(kinds) > 1:
            raise CrossDistillError(
                "StackedInputs.stack: the inputs differ in shape or dtype (" +
                ", ".join(f"{s} {d}" for s, d in kinds) + "); inputs of different shapes need a wrapper of "
                "your own that takes one tensor and splits it (docs/any_model.md, 'Models with several inputs')")
        return torch.stack(tensors, 1)

    def forward(self, x: torch.Tensor) -> object:
        parts = x.unbind(1)
        if self.names is None:
            return self.model(*parts)
        if len(parts) != len(self.names):
            from crossdistill.errors import CrossDistillError

            raise CrossDistillError(f"StackedInputs: {len(parts)} stacked inputs for {len(self.names)} names "
                                    f"{list(self.names)}")
        return self.model(**dict(zip(self.names, parts)))


def check_file_inputs(model: nn.Module, input_dtype: str, source: str) -> None:
    """Refuse, naming the way, a model whose inputs no data file can hold: several stacked inputs
    (StackedInputs) or token ids. The command line reads images or signals from files; asked
    anyway, it went round in circles about pixel normalisation and channel counts."""
    from crossdistill.errors import CrossDistillError

    if isinstance(model, StackedInputs):
        raise CrossDistillError(f"{source} takes several inputs (crossdistill.StackedInputs): the command line reads one "
                                "input per sample from a file; use the Python API (crossdistill.compress(model, "
                                "StackedInputs.stack(...)), crossdistill.load, crossdistill.evaluation_agreement.scores, "
                                "crossdistill.export_model)")
    if input_dtype != FLOAT:
        raise CrossDistillError(f"{source} takes token ids, which the command line does not read from files: use the "
                                "Python API (crossdistill.compress(model, ids, labels=...), crossdistill.load, "
                                "crossdistill.evaluation_agreement.scores, crossdistill.export_model(model, path, "
                                "'onnx', ids))")
