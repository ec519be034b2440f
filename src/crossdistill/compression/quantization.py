"""Post-training weight quantization as a compression method (`--prune quant`).

Which layers: every conv (1-3 d, transposed, grouped and depthwise ones too, solved group by group)
and Linear of the model, in module order, including the first conv (`quant_first=False` leaves it in float) and
the final linear (`quant_last=False`); the report lists every layer with its status
(`summary()["quant"]["layers"]`, see compression/coverage.py). Biases and BatchNorm stay in float32. Activations are not quantized: this is weight-only quantization,
the setting in which GPTQ-style solvers are used.

The quantized model, for persistence (`crossdistill.models.save_model`/`load_model`)
----------------------------------------------------------------------------------
After `finalize`, the model carries

    model.crossdistill_quant = {
        layer_name: {
            "bits": int,                 # 2..8
            "scheme": "symmetric" | "asymmetric",
            "codes": Tensor,             # weight shape; int8 (symmetric) or uint8 (asymmetric)
            "scale": Tensor,             # (out,) float32, > 0
            "zero_point": Tensor,        # (out,) same dtype as codes; all 0 when symmetric
            "transposed_groups": int,    # only for a transposed conv: its groups
        }, ...}

and every listed layer's float weight equals, bit for bit, `dequantized_weight(entry)` =
scale[:, None, ...] · (codes − zero_point) computed in float32: the model runs with dequantised
weights. The grid is one per output channel, a row of `capture.weight_matrix`: a transposed conv
holds its weight as (in, out/groups, k…), so its codes are read in that matrix layout (output
channel j of group i is slice [i·in/groups:(i+1)·in/groups, j] of the codes). To store a model, save `quant_tensors(model)` (flat name → tensor, safetensors-ready)
and `quant_metadata(model)` (JSON); to load, build the float model, load its state dict, then
`attach_quant(model, tensors, metadata)`, which validates the codes and writes the dequantised
weights (`dequantize_into`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from crossdistill.capture import get_module, group_size, rows_of, transposed_groups, unrows
from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.coverage import Coverage, survey
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError
from crossdistill.params import param
from crossdistill.solvers import LayerTask
from crossdistill.solvers.quant_grid import (
    MAX_BITS,
    MIN_BITS,
    SCHEMES,
    Grid,
    check_bits,
    check_scheme,
    code_dtype,
    code_range,
    grid_from_info,
)

QUANT_ATTR = "crossdistill_quant"
# Suffixes of the flat tensor names written by `quant_tensors`.
_CODES, _SCALE, _ZERO = "qcodes", "qscale", "qzero"


def quant_coverage(model: nn.Module, first: bool, last: bool, order: Sequence[str] | None = None,
                   input_readers: Sequence[str] | None = None, output_layers: Sequence[str] | None = None) -> Coverage:
    """Every conv and linear with its status: quantized unless the first conv / the last linear
    (by the settings) or unsupported (`order`: see survey)."""
    cov = survey(model, "quant", first=first, last=last, first_setting="quant_first", last_setting="quant_last",
                 order=order, input_readers=input_readers, output_layers=output_layers)
    if not cov.entries:
        raise CrossDistillError(f"{type(model).__name__} has no conv or linear layers to compress")
    return cov


@dataclass
class Quantization(CompressionMethod):
    name = "quant"
    solver_family = "quant"
    default_solver = "gptq"

    bits: int = param(4, "weight bits", low=MIN_BITS, high=MAX_BITS)
    quant_scheme: str = param("asymmetric", "per-output-channel grid, symmetric (zero point 0) or asymmetric",
                              choices=SCHEMES)
    quant_first: bool = param(True, "quantize the first layer too", show=False)
    quant_last: bool = param(True, "quantize the last layer too", show=False)
    quant_solver: str | None = param(None, "solver of the quantization stage (default: --solver if it names a "
                                     "quant solver, else gptq)", choices=lambda: _quant_solvers(), show=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._coverage: Coverage | None = None

    @property
    def scheme(self) -> str:
        return self.quant_scheme

    def plan(self, model: nn.Module) -> list[LayerTask]:
        self._coverage = quant_coverage(model, self.quant_first, self.quant_last, self.layer_order,
                                        self.input_readers, self.output_layers)
        self._coverage.warn()
        return [
            LayerTask(name=n, group=group_size(get_module(model, n)), params={"bits": self.bits, "scheme": self.scheme})
            for n in self._coverage.planned
        ]

    def stages(self) -> list[tuple[CompressionMethod, str | None]]:
        return [(self, self.quant_solver)]

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        entries = dict(getattr(model, QUANT_ATTR, {}) or {})
        for rec in records:
            if "scale" not in rec.info:
                continue
            layer = get_module(model, rec.name)
            entries[rec.name] = encode_weight(layer.weight.detach(), grid_from_info(rec.info, layer.weight.device), rec.name,
                                              transposed_groups(layer))
            if self._coverage is not None and rec.name in self._coverage.entries:
                self._coverage.done(rec.name, "quantized", bits=int(rec.info["bits"]))
        setattr(model, QUANT_ATTR, entries)
        dequantize_into(model)
        return model

    def summary(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {"model_size": model_size_bytes(model)}
        if self._coverage is not None:
            out["quant"] = {"layers": self._coverage.report()}
        return out

def _quant_solvers() -> list[str]:
    from crossdistill.solvers import SOLVERS

    return sorted(SOLVERS["quant"])


def _kind(groups: int) -> str:
    return f"a transposed conv of {groups} group{'s' * (groups > 1)}" if groups else "a layer other than a transposed conv"


def check_layer_kind(name: str, entry: Mapping[str, Any], layer: nn.Module) -> None:
    """Refuse a record made for another kind of layer: its scales would run along the wrong axis."""
    made_for = int(entry.get("transposed_groups", 0))
    if made_for != transposed_groups(layer):
        raise CrossDistillError(f"layer {name!r}: its quantization record was made for {_kind(made_for)}, "
                                f"the layer is {_kind(transposed_groups(layer))}")


def output_channels(codes_shape: Sequence[int], groups: int) -> int:
    """How many scales a layer's grid has: one per output channel."""
    return groups * codes_shape[1] if groups else codes_shape[0]


def encode_weight(weight: torch.Tensor, grid: Grid, name: str = "layer", transposed_groups: int = 0) -> dict[str, Any]:
    """Integer codes of a weight that the solver has already put on `grid` (one row per output
    channel; `transposed_groups`: see `transposed_groups`). Raises if a value is off the grid (a
    solver bug, or a weight changed after solving)."""
    w = rows_of(weight.detach().to(torch.float64), transposed_groups)
    codes = grid.codes(w)
    off = (grid.dequantize(codes) - w).abs()
    # A grid point stored in float32 is off by up to half its ulp (2^-24 of it): at 8 bits a code
    # 255 steps from the zero point is that far off by 255 × 2^-24 ≈ 1.5e-5 of a step, which a
    # tolerance of 1e-5 step alone refused (an all-positive row, e.g. an identity's).
    tol = 1e-5 * float(grid.scale.max()) + 2.0**-23 * w.abs()
    if w.numel() and bool((off > tol).any()):
        worst = float(off.flatten()[int((off - tol).argmax())])
        raise CrossDistillError(f"layer {name!r}: weights are not on the quantization grid (off by {worst:.3g})")
    dtype = code_dtype(grid.scheme)
    entry = {
        "bits": grid.bits,
        "scheme": grid.scheme,
        "codes": unrows(codes, weight.shape, transposed_groups).to(dtype),
        "scale": grid.scale.to(torch.float32),
        "zero_point": grid.zero_point.to(dtype),
    }
    if transposed_groups:
        entry["transposed_groups"] = int(transposed_groups)
    return entry


def dequantized_weight(entry: Mapping[str, Any]) -> torch.Tensor:
    """scale · (code − zero_point) in float32, per output channel."""
    codes = entry["codes"]
    groups = int(entry.get("transposed_groups", 0))
    rows = rows_of(codes.to(torch.float32), groups)
    scale = entry["scale"].to(torch.float32).reshape(-1, 1)
    zp = entry["zero_point"].to(torch.float32).reshape(-1, 1)
    return unrows(scale * (rows - zp), codes.shape, groups)


def dequantize_into(model: nn.Module) -> nn.Module:
    """Write the dequantised weights of every entry of `model.crossdistill_quant` into the
    layers' float weights (in place; returns the model)."""
    for name, entry in (getattr(model, QUANT_ATTR, None) or {}).items():
        layer = get_module(model, name)
        check_layer_kind(name, entry, layer)
        w = dequantized_weight(entry)
        if tuple(w.shape) != tuple(layer.weight.shape):
            raise CrossDistillError(
                f"layer {name!r}: quantized codes have shape {tuple(w.shape)}, the layer's weight {tuple(layer.weight.shape)}"
            )
        with torch.no_grad():
            layer.weight.copy_(w.to(layer.weight.dtype))
    return model


def quantized_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that hold quantized weights (an attention's packed q/k/v once), which a
    fine-tune must leave alone: their integer codes are the model."""
    from crossdistill.weight_views import WeightView

    out: dict[int, nn.Parameter] = {}
    for name in getattr(model, QUANT_ATTR, None) or {}:
        layer = get_module(model, name)
        param = layer.storage()[0] if isinstance(layer, WeightView) else layer.weight
        out[id(param)] = param
    return list(out.values())


def quant_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Flat tensors for a safetensors file: `{layer}.qcodes`, `{layer}.qscale`, `{layer}.qzero`."""
    out: dict[str, torch.Tensor] = {}
    for name, e in (getattr(model, QUANT_ATTR, None) or {}).items():
        out[f"{name}.{_CODES}"] = e["codes"].contiguous()
        out[f"{name}.{_SCALE}"] = e["scale"].contiguous()
        out[f"{name}.{_ZERO}"] = e["zero_point"].contiguous()
    return out


def quant_metadata(model: nn.Module) -> dict[str, dict[str, Any]]:
    """JSON-serialisable {layer: {"bits", "scheme"[, "transposed_groups"]}}; empty for a float model."""
    out: dict[str, dict[str, Any]] = {}
    for n, e in (getattr(model, QUANT_ATTR, None) or {}).items():
        out[n] = {"bits": int(e["bits"]), "scheme": str(e["scheme"])}
        if e.get("transposed_groups"):
            out[n]["transposed_groups"] = int(e["transposed_groups"])
    return out


def attach_quant(model: nn.Module, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Inverse of (`quant_tensors`, `quant_metadata`): validate, attach, dequantise into the model."""
    entries: dict[str, dict[str, Any]] = {}
    for name, meta in metadata.items():
        try:
            bits, scheme = check_bits(meta["bits"]), check_scheme(meta["scheme"])
            codes, scale, zp = (tensors[f"{name}.{s}"] for s in (_CODES, _SCALE, _ZERO))
        except KeyError as exc:
            raise CrossDistillError(f"quantized layer {name!r}: missing {exc}") from None
        qmin, qmax = code_range(bits, scheme)
        if codes.dtype != code_dtype(scheme) or zp.dtype != code_dtype(scheme):
            raise CrossDistillError(f"quantized layer {name!r}: codes must be {code_dtype(scheme)}")
        if codes.numel() and (int(codes.min()) < qmin or int(codes.max()) > qmax):
            raise CrossDistillError(f"quantized layer {name!r}: codes outside [{qmin}, {qmax}] for {bits}-bit {scheme}")
        groups = meta.get("transposed_groups", 0)
        if "transposed_groups" in meta and (not isinstance(groups, int) or isinstance(groups, bool) or groups < 1
                                            or codes.dim() < 3 or codes.shape[0] % groups):
            raise CrossDistillError(f"quantized layer {name!r}: 'transposed_groups' must be the groups of a transposed conv")
        if (codes.dim() == 0 or scale.dim() != 1 or scale.shape[0] != output_channels(codes.shape, groups)
                or zp.shape != scale.shape):
            raise CrossDistillError(f"quantized layer {name!r}: need one scale and zero point per output channel")
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise CrossDistillError(f"quantized layer {name!r}: scales must be finite and positive")
        if scheme == "symmetric" and bool((zp != 0).any()):
            raise CrossDistillError(f"quantized layer {name!r}: a symmetric grid has zero point 0")
        if zp.numel() and (int(zp.min()) < qmin or int(zp.max()) > qmax):
            raise CrossDistillError(f"quantized layer {name!r}: zero points outside [{qmin}, {qmax}]")
        entries[name] = {"bits": bits, "scheme": scheme, "codes": codes, "scale": scale.to(torch.float32), "zero_point": zp}
        if groups:
            entries[name]["transposed_groups"] = groups
    setattr(model, QUANT_ATTR, entries)
    return dequantize_into(model)


def model_size_bytes(model: nn.Module) -> dict[str, int]:
    """Storage of the model for inference: quantized weights as bit-packed codes
    (⌈n·bits/8⌉ bytes) + one float32 scale per output channel + one byte of zero point per
    output channel (asymmetric only); every other parameter and BatchNorm running statistic in
    float32 (BN counters, which inference never reads, are not counted)."""
    quant = getattr(model, QUANT_ATTR, None) or {}
    codes = scales = floats = 0
    for key, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not key.endswith("num_batches_tracked"):
            floats += t.numel() * t.element_size()
    for name in quant:
        # Subtracted layer by layer: an attention's q/k/v are rows of one packed parameter.
        w = get_module(model, name).weight
        floats -= w.numel() * w.element_size()
    for e in quant.values():
        codes += math.ceil(e["codes"].numel() * int(e["bits"]) / 8)
        scales += e["scale"].numel() * 4 + (e["zero_point"].numel() if e["scheme"] == "asymmetric" else 0)
    return {"total": codes + scales + floats, "codes": codes, "scales": scales, "float": floats}
