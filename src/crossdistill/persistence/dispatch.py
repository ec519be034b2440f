"""`load`: any weights file, crossdistill's own format or a plain state dict.

This is the one module of the package that uses `crossdistill.models.checkpoint` (for plain
files); checkpoint uses `reader`/`writer` for crossdistill files, never this module, so the two
do not import each other.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from crossdistill.persistence.files import read_header, resolve_model_path
from crossdistill.persistence.reader import rebuild
from crossdistill.persistence.spec import META_KEY

__all__ = ["load"]


def load(path: str | Path, *, model: str | None = None, factory: str | None = None) -> nn.Module:
    """Rebuild a model saved by `save` (or by `crossdistill compress`: give the run directory).

    Returns the model in eval mode, with the sparsity masks, quantization codes and low-rank
    structure it was saved with. Files without a crossdistill document (plain state dicts,
    `.th/.pt/.pth` read with weights_only) are loaded by `crossdistill.models.load_model`, which
    needs the model name when the file does not record it. A user's model (compressed from a
    factory, `path/to/file.py:function`) is rebuilt by calling that factory again: from the path
    recorded in the file, or from `factory` when the file has moved. Any defect of the file
    raises CrossDistillError.
    """
    path = resolve_model_path(path)
    header = read_header(path) if path.suffix == ".safetensors" else {}
    if META_KEY not in header:
        from crossdistill.models.checkpoint import load_model

        return load_model(path, model).eval()
    return rebuild(path, header[META_KEY], model, factory)
