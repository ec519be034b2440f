"""Run configuration: YAML files set defaults, CLI flags override them (as timm does), and the
resolved config is saved beside every result."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from crossdistill.errors import CrossDistillError


_TYPES: dict[str, Any] = {"int": int, "float": (int, float), "str": str, "bool": bool, "None": type(None), "dict": dict}


@dataclass
class CompressConfig:
    # what to compress
    model: str = "resnet56"
    weights: str | None = None
    data: str | None = None
    eval_data: str | None = None
    # few-shot draw
    shots: int | None = 5
    n_samples: int | None = None
    seed: int = 0
    sampler: str = "random"  # 'random' or 'first' (the official code's first K of each class)
    # compression
    prune: str = "channels"
    keep: float | str = 0.5
    # quant / lowrank / channels+quant / lowrank+quant (compression/quantization.py, low_rank.py)
    bits: int = 4
    quant_scheme: str = "asymmetric"  # 'symmetric' | 'asymmetric'
    quant_solver: str | None = None  # None: --solver if it names a quant solver, else gptq
    rank_ratio: float | None = None  # low rank: rank = ratio · min(out, in·k²); default 0.5
    flops_ratio: float | None = None  # low rank: or at most this share of each layer's FLOPs
    sparsity: float = 0.9  # prune: sparsity — fraction of zeros in every conv but the first
    # cross distillation
    # soft(α 0, β 0.3): chosen over no-cross, mixed and other soft settings on a validation split
    # (crossdistill.defaults, docs/results/objective_defaults.md)
    objective: str = "soft"
    mu: float | None = None  # None: the model's default (0.9 ResNet, 0.6 VGG)
    alpha: float = 0.0
    beta: float = 0.3
    solver: str = "closed-form"
    selection: str = "obs"
    damping: float | None = None  # None: auto, 0.1 / K (crossdistill.defaults)
    iters: int = 3000
    lr: float | None = None
    batch_size: int = 64
    # optional few-shot fine-tune after distillation (crossdistill.finetune); 0 epochs = off
    finetune_epochs: int = 0
    finetune_lr: float = 1e-4
    finetune_bn: str = "auto"  # 'auto' | 'frozen' | 'recalibrate' | 'train' (crossdistill.finetune)
    finetune_temperature: float = 4.0
    finetune_kd_weight: float = 1.0  # KD share; the rest is cross-entropy on the few labels
    finetune_mode: str = "kd"  # 'kd': logits only | 'hints': + feature hints (crossdistill.hints)
    finetune_hint_weight: float = 1.0  # weight of the hint loss in mode 'hints'
    finetune_hints: str = "layers"  # hint points: layers | blocks | penultimate | layers+penultimate | blocks+penultimate
    finetune_logit_weight: float | None = None  # logit loss (KD + CE) weight; None: 1 in mode 'kd', 0 (hints only) in 'hints'
    finetune_schedule: str = "constant"  # learning rate: 'constant' | 'cosine'
    finetune_mixup: float = 0.0  # > 0: Beta(a, a) mixup of the few images (the teacher labels the mixes)
    finetune_cutmix: float = 0.0  # > 0: Beta(a, a) CutMix of the few images
    finetune_ema: float = 0.0  # > 0: keep the moving average of the weights, this decay per step
    finetune_views: str = "crop-flip"  # random views: 'crop-flip' | 'affine' (zoom/rotate/shift/flip + jitter)
    # where the training steps (fine-tune, training baselines) run: cpu | cuda | cuda:N | auto;
    # the layer-wise solves always run on the CPU in float64 (crossdistill.device)
    device: str = "cpu"
    # evaluation
    latency: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def _check_types(self) -> None:
        # Values from YAML files and sweeps arrive untyped: a string or NaN where a number
        # belongs would otherwise fail deep inside a solver, far from the setting that caused it.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            names = [t.strip().split("[")[0] for t in str(f.type).split("|")]
            if not {"int", "float", "bool"} & set(names):
                continue  # paths and names: checked where they are used
            allowed = tuple(_TYPES[n] for n in names if n in _TYPES)
            if isinstance(value, bool) and bool not in allowed:
                ok = False
            else:
                ok = isinstance(value, allowed)
            if not ok:
                want = " or ".join(n if n != "None" else "null" for n in names)
                raise CrossDistillError(f"{f.name} must be {want}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise CrossDistillError(f"{f.name} must be a finite number, got {value}")

    def validate(self) -> "CompressConfig":
        self._check_types()
        if self.seed < 0:
            raise CrossDistillError(f"seed must be >= 0, got {self.seed}")
        if self.lr is not None and self.lr <= 0:
            raise CrossDistillError(f"lr must be positive, got {self.lr}")
        if self.shots is not None and self.n_samples is not None:
            raise CrossDistillError("give either shots (K per class) or n_samples, not both")
        if self.shots is None and self.n_samples is None:
            raise CrossDistillError("give shots (K per class) or n_samples")
        for name in ("mu", "alpha", "beta"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise CrossDistillError(f"{name} must lie in [0, 1], got {v}")
        if isinstance(self.keep, str):
            if self.keep != "paper":
                try:
                    self.keep = float(self.keep)
                except ValueError:
                    raise CrossDistillError(f"keep must be a ratio in (0, 1] or 'paper', got {self.keep!r}") from None
        if not isinstance(self.keep, str) and not 0.0 < float(self.keep) <= 1.0:
            raise CrossDistillError(f"keep ratio must lie in (0, 1], got {self.keep}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise CrossDistillError(f"sparsity must lie in [0, 1) (fraction of zero weights), got {self.sparsity}")
        from crossdistill.finetune import check_finetune_recipe, check_finetune_settings

        check_finetune_settings(self.finetune_epochs, self.finetune_lr, self.finetune_bn,
                                self.finetune_temperature, self.finetune_kd_weight)
        check_finetune_recipe(self.finetune_mode, self.finetune_hint_weight, self.finetune_logit_weight,
                              self.finetune_schedule, self.finetune_mixup, self.finetune_cutmix, self.finetune_hints,
                              self.finetune_views, self.finetune_ema)
        from crossdistill.solvers.quant_grid import check_bits, check_scheme

        self.bits = check_bits(self.bits)
        check_scheme(self.quant_scheme)
        if self.rank_ratio is not None and not 0.0 < float(self.rank_ratio) <= 1.0:
            raise CrossDistillError(f"rank_ratio must lie in (0, 1], got {self.rank_ratio}")
        if self.flops_ratio is not None and not 0.0 < float(self.flops_ratio) < 1.0:
            raise CrossDistillError(f"flops_ratio must lie in (0, 1), got {self.flops_ratio}")
        if self.rank_ratio is not None and self.flops_ratio is not None:
            raise CrossDistillError("give either rank_ratio or flops_ratio, not both")
        if self.sampler not in ("random", "first"):
            raise CrossDistillError(f"sampler must be 'random' or 'first', got {self.sampler!r}")
        if self.damping is not None and self.damping < 0:
            raise CrossDistillError(f"damping must be >= 0, got {self.damping}")
        if self.iters < 1 or self.batch_size < 1:
            raise CrossDistillError("iters and batch_size must be positive")
        from crossdistill.device import resolve_device

        resolve_device(self.device)  # a CUDA device that is not there fails here, before any work
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CompressConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CrossDistillError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(values))


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CrossDistillError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise CrossDistillError(f"config {path} is not valid YAML: {problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CrossDistillError(f"config {path} must be a mapping of keys to values")
    return data


def resolve(defaults: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> CompressConfig:
    """Config file values first, then every override that was actually given (not None)."""
    merged = dict(defaults or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    # shots (K per class) and n_samples are alternatives: the one given last wins, and a file or
    # flag that names n_samples replaces the default K=5 instead of clashing with it.
    if "n_samples" in given and "shots" not in given:
        merged["shots"] = None
    if "shots" in given and "n_samples" not in given:
        merged.pop("n_samples", None)
    merged.update(given)
    if merged.get("n_samples") is not None and "shots" not in merged:
        merged["shots"] = None
    return CompressConfig.from_dict(merged).validate()
