"""What a run is built from: the teacher and its model info, and the objective and solvers
its config names (with the defaults a model implies).

Moved out of pipeline so that it holds the run itself; every name stays importable from
`crossdistill.pipeline`.
"""
from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from crossdistill.checks import warn_unnormalised
from crossdistill.compression import CompressionMethod
from crossdistill.compression.composite import stage_solver_name
from crossdistill.config import CompressConfig, RunSettings
from crossdistill.data import ImageArrays
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.models import create_model, load_weights, model_info
from crossdistill.models.registry import ModelInfo, list_models
from crossdistill.models.user import build_user_model, check_registered_outputs, infer_info, is_factory_spec
from crossdistill.objectives import OBJECTIVES, Objective
from crossdistill.params import declared_params
from crossdistill.solvers import LayerSolver, create_solver

class TeacherWarning(UserWarning):
    """A teacher that may not be the trained model the user means (the CLI prints one line)."""


def load_teacher(cfg: CompressConfig) -> nn.Module:
    """The registered model, or the user's (`path/to/file.py:factory`), with cfg.weights loaded."""
    model = build_user_model(cfg.model) if is_factory_spec(cfg.model) else create_model(cfg.model)
    from crossdistill.model_inputs import check_file_inputs

    check_file_inputs(model, "float32", cfg.model)  # files hold images or signals: one float input
    if cfg.weights:
        try:
            load_weights(model, cfg.weights)
        except CrossDistillError as exc:
            if cfg.model != RunSettings.model:
                raise
            # Often no --model at all: the weights of one's own model read as the default's.
            raise CrossDistillError(f"{exc} (--model defaults to {cfg.model}: name your model with --model "
                                    "path/to/file.py:function or a registered name)") from None
    elif is_factory_spec(cfg.model):
        # A run on untrained weights looks like any other run; say so unless the factory loads its own.
        warnings.warn(f"no --weights: the teacher is what {cfg.model} returns, untrained unless it loads "
                      "weights itself", TeacherWarning, stacklevel=outside_stacklevel())
    return model.eval()


def warn_untrained(cfg: CompressConfig) -> None:
    """A registered model run without --weights is a random network: said once the run's inputs
    are known to be good (before, it would stand beside every refusal of bad data)."""
    if not cfg.weights and not is_factory_spec(cfg.model):
        warnings.warn(f"no --weights: the teacher is {cfg.model} with random weights (the registry builds the "
                      "network, not its training): give the trained weights with --weights",
                      TeacherWarning, stacklevel=outside_stacklevel())


def info_of(cfg: CompressConfig, teacher: nn.Module, data: ImageArrays) -> ModelInfo:
    """The registry's info, or, for a user's model, one from the config (input size, mean,
    std) and the data (the input size when not given), checked by one forward pass."""
    if not is_factory_spec(cfg.model) and cfg.model in list_models():
        check_registered_outputs(cfg.model, cfg.output_key, cfg.output_kind)
        info = model_info(cfg.model)
        given = [f"--{k.replace('_', '-')}" for k in ("mean", "std", "input_size") if getattr(cfg, k) is not None]
        if given:
            # They were recorded in the run's config and used nowhere: the registry's settings win.
            raise CrossDistillError(f"{'/'.join(given)}: {cfg.model} is a registered model, with its own input size "
                                    f"{tuple(info.input_size)} and normalisation (mean {list(info.mean)}, std "
                                    f"{list(info.std)}); leave {'them' if len(given) > 1 else 'it'} out (they are "
                                    "for a model of your own, --model path/to/file.py:function)")
        return info
    if cfg.input_size is not None and not data.is_signal and len(cfg.input_size) != 3:
        # Two numbers read as (C, L) of a signal: the forward would fail with advice about batches.
        raise CrossDistillError(f"--input-size {' '.join(map(str, cfg.input_size))}: images take C H W (these are "
                                f"{' '.join(map(str, data.input_shape))})")
    if not data.is_signal:
        warn_unnormalised(cfg.model, cfg.mean, cfg.std)
    size = cfg.input_size or data.input_shape
    try:
        return infer_info(teacher, cfg.model, size, mean=cfg.mean, std=cfg.std, output=cfg.output_key,
                          kind=cfg.output_kind)
    except CrossDistillError as exc:
        if not data.note or cfg.input_size is not None:
            raise
        # The channel count came from the images: say why a mostly gray folder gave three.
        raise CrossDistillError(f"{exc}; {data.note}") from exc.__cause__


def model_defaults(model: str) -> dict[str, Any]:
    """Plug-in settings whose default depends on the model (the paper's μ: 0.9 ResNet, 0.6 VGG);
    they fill a setting left at None. A model the registry does not know gets the fallback (μ 0.9),
    filled in here so that the run's description and report name the μ it used."""
    from crossdistill.models.user import USER_DEFAULT_MU

    try:
        info = model_info(model)
    except CrossDistillError:
        return {"mu": USER_DEFAULT_MU}
    return {"mu": info.default_mu}


def _with_model_defaults(cls: type, params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    names = {p.name for p in declared_params(cls)}
    return {**params, **{k: v for k, v in defaults.items() if k in names and params.get(k) is None}}


def build_objective(cfg: CompressConfig) -> Objective:
    cls = OBJECTIVES.get_class(cfg.objective.name)
    return OBJECTIVES.build(cfg.objective.name, _with_model_defaults(cls, cfg.objective.params, model_defaults(cfg.model)))


def build_solver(stage: CompressionMethod, override: str | None, cfg: CompressConfig) -> LayerSolver:
    """The solver of one stage; the config's solver settings go to the solver they were given for."""
    name = stage_solver_name(stage, override, cfg.solver.name)
    params = cfg.solver.params if name == cfg.solver.name else {}
    return create_solver(stage.solver_family, name, **params)
