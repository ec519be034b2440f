"""Model registry (timm-like): names -> factories plus the metadata that belongs to each model.

Normalisation constants and the default mixing weight mu live here, next to the architecture,
because they are a property of the pretrained model / dataset pairing: feeding a network
images normalised differently from its training silently costs accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from torch import nn

from crossdistill.errors import CrossDistillError

__all__ = [
    "ChannelPair",
    "ModelInfo",
    "register_model",
    "create_model",
    "create_like",
    "list_models",
    "model_info",
    "spec_from_state_dict",
]

FAMILIES = ("cifar_resnet", "vgg", "small_cnn", "imagenet_resnet")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ChannelPair:
    """One prunable connection: removing output channels of `producer` removes input
    channels of `consumer`.

    producer: module name of the conv whose OUTPUT channels get removed.
    bn: module name of the BatchNorm directly after `producer` (sliced alongside), or None.
    consumer: module name of the conv whose INPUT channels are pruned.
    """

    producer: str
    bn: str | None
    consumer: str


@dataclass(frozen=True)
class ModelInfo:
    """What a caller needs to feed a registered model correctly."""

    name: str
    family: str
    input_size: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_mu: float
    # Which of the model's outputs holds its predictions (model_outputs.predictions) and what
    # kind they are; a registered model returns (batch, classes) logits.
    output: str | None = None
    kind: str = "classes"
    input_dtype: str = "float32"  # or "int64": token ids (model_inputs)


_F = TypeVar("_F", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}


def register_model(
    name: str,
    *,
    family: str,
    input_size: tuple[int, int, int],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    default_mu: float,
) -> Callable[[_F], _F]:
    """Decorator registering `fn(**kw) -> nn.Module` under `name` with its metadata."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    if len(mean) != input_size[0] or len(std) != input_size[0]:
        raise ValueError(f"{name}: mean/std must have one entry per input channel")
    info = ModelInfo(
        name=name,
        family=family,
        input_size=tuple(input_size),  # type: ignore[arg-type]
        num_classes=num_classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        default_mu=float(default_mu),
    )

    def decorator(fn: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = (fn, info)
        return fn

    return decorator


def _lookup(name: str) -> tuple[Callable[..., nn.Module], ModelInfo]:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        # `mymodel.py` alone: a file without the function that builds the model.
        hint = (f"; a model of your own is named with the function that builds it, {name}:function"
                if name.endswith(".py") else "")
        raise CrossDistillError(f"unknown model {name!r}; known models: {known}{hint}") from None


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """Metadata (family, input size, classes, normalisation, default mu) of a registered model."""
    return _lookup(name)[1]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; kwargs go to its constructor (e.g. `mid_channels`, `num_classes`).

    The returned module carries `crossdistill_name` so it can later be rebuilt with
    `create_model(model.crossdistill_name, **model.spec())`.
    """
    fn, _ = _lookup(name)
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CrossDistillError(f"cannot build model {name!r} with {kwargs}: {exc}") from exc
    model.crossdistill_name = name
    return model


def create_like(model: nn.Module) -> nn.Module:
    """A freshly initialised model with the same (possibly slimmed) architecture as `model`."""
    name = getattr(model, "crossdistill_name", None)
    if name is None:
        raise CrossDistillError("model was not built by create_model (no crossdistill_name)")
    return create_model(name, **model.spec())  # type: ignore[operator]


def spec_from_state_dict(name: str, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Constructor kwargs that make `create_model(name, **spec)` match the shapes in `state_dict`.

    Lets a slimmed checkpoint be loaded knowing only the base model name.
    """
    fn, _ = _lookup(name)
    infer = getattr(fn, "spec_from_state_dict", None)
    if infer is None:
        return {}
    try:
        return infer(state_dict)
    except KeyError as exc:
        raise CrossDistillError(f"weights do not look like a {name!r} model: key {exc} is missing") from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise CrossDistillError(f"weights do not look like a {name!r} model: {exc}") from None
