"""The parts of a config: run-level settings (declared like a plug-in's), the plug-in sections
and where each section's plug-ins are registered."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from crossdistill.errors import ConfigWarning, CrossDistillError
from crossdistill.params import Param, Plugin, declared_params, param

SECTIONS = ("method", "objective", "solver")
DEFAULT_NAMES = {"method": "channels", "objective": "soft", "solver": "closed-form"}
# Older configs' names for a key.
ALIASES = {"prune": "method"}
FINETUNE_PREFIX = "finetune_"


# The names of crossdistill.baselines.BASELINES, spelled out because importing that package here
# would close an import cycle (it imports the pipeline, which imports the config); a test keeps
# the two lists equal.
BASELINE_NAMES = ("l1", "l1-finetune", "bp", "fitnet", "fskd", "thinet", "cp")
# Baselines defined by their fine-tune's logit loss (cross-entropy, or distillation plus
# cross-entropy): they always fine-tune, and always in mode 'kd'.
LOGIT_FINETUNE_BASELINES = ("bp", "l1-finetune")


@dataclass
class RunSettings(Plugin):
    """The settings of a run that belong to no plug-in."""

    kind = "config"
    name = "run"
    model: str = param("resnet56", "registered model name (see `crossdistill models`), or your own model as "
                       "path/to/file.py:function (a function returning the nn.Module; --weights loads its state dict)")
    weights: str | None = param(None, "teacher checkpoint (.th/.pt/.pth read with weights_only, or .safetensors)")
    data: str | None = param(None, "training data: .npz (x: uint8 images N×H×W×C, or float signals N×C×L "
                             "taken as stored), a folder of class subfolders of images (one size; "
                             "`crossdistill pack` resizes), cifar-10-batches-py folder, Fashion-MNIST folder, "
                             "or 'cifar10'/'fashion-mnist'")
    eval_data: str | None = param(None, "test data (same formats); omit to skip evaluation")
    shots: int | None = param(5, "K samples per class", low=1)
    n_samples: int | None = param(None, "N random samples instead of K per class", low=1)
    seed: int = param(0, "seed of the few-shot draw", low=0)
    sampler: str = param("random", "few-shot draw: random, or first (the first K of each class, as the "
                         "paper's code)", choices=("random", "first"))
    damping: float | None = param(None, "ridge towards the teacher, x mean diag of H (default: 0.1/K, "
                                  "K = images per class)", low=0)
    batch_size: int = param(64, "images per forward pass while capturing", low=1)
    capture: str = param("all", "how hidden states are captured: all (one teacher pass keeps every solved "
                         "layer's inputs: fastest), stream (layer by layer, front to back: one layer's inputs "
                         "held), or disk (as stream, the cached fronts in files under --capture-dir, inputs "
                         "read batch by batch: memory for one batch, for calibration sets of thousands of "
                         "images)", choices=("all", "stream", "disk"))
    capture_dir: str | None = param(None, "an existing folder where --capture disk writes its temporary "
                                    "files (default: the system's temporary folder); they are removed when the "
                                    "compression ends")
    views: int = param(0, "random views of each few-shot image added to the images the layer-wise solve "
                       "fits on (the solve matches the teacher's hidden states, so a view needs no label; "
                       "0 = the few-shot images alone)", low=0)
    views_policy: str = param("crop-flip", "the views of --views: crop-flip (pad-4 crop, flip; the default, which "
                              "gained on a validation split where affine did not: docs/results/recovery.md) or affine "
                              "(zoom, rotation, shift, flip, contrast; docs/finetune.md)", choices=("crop-flip", "affine"))
    views_mixup: float = param(0.0, "with --views: blend each view with another, weight ~ Beta(A, A) "
                               "(0 = off)", low=0)
    input_size: tuple[int, ...] | None = param(None, "a model the registry does not know: its input size C H W "
                                               "(C L for signals; default: that of the training data)", low=1, item=int)
    mean: tuple[float, ...] | None = param(None, "a model the registry does not know: per-channel mean subtracted "
                                           "from pixels scaled to [0, 1] (from signals as stored) (default 0)", item=float)
    std: tuple[float, ...] | None = param(None, "a model the registry does not know: per-channel std dividing "
                                          "them (default 1)", low=0, low_open=True, item=float)
    classes: tuple[str, ...] | None = param(None, "the model's classes in the order of its outputs, by the names "
                                            "the data gives them (a folder's subfolders, an .npz's class_names): "
                                            "label i is the i-th name; one name that is a file: a name a line "
                                            "(default: the data's own order, a folder's sorted names)", item=str)
    output_key: str | None = param(None, "a model that returns several outputs (a tuple, list, dict or named "
                                   "tuple, e.g. logits beside features): which one holds the predictions, as a "
                                   "key, a field name or an index (default: the 'logits' entry, else the first)")
    output_kind: str = param("auto", "what the predictions are: classes ((batch, C) logits), binary (one logit "
                             "per sample), dense (logits per position, classes on dim 1: segmentation), sequence "
                             "((batch, L, C) logits per token, classes last), values (no classes: regression, "
                             "depth, embeddings), or auto (from their shape; docs/any_model.md)",
                             choices=("auto", "classes", "binary", "dense", "sequence", "values"))
    device: str = param("cpu", "where the work runs: the layer-wise compression (forwards, float64 moments "
                        "and solves), the fine-tune and the training baselines (bp, l1-finetune, fitnet): cpu, "
                        "cuda, cuda:N, or auto (CUDA when present); slimming, saving and evaluation stay on the CPU")
    # Off unless asked: timing costs minutes on big models and means little on a busy machine.
    latency: bool = param(False, "measure CPU latency in the evaluation (compress --latency)")
    threads: int | None = param(None, "CPU threads for torch during the run (compression, evaluation, "
                                "latency timing; default: torch's choice)", low=1)
    baseline: str | None = param(None, "run this baseline of crossdistill.baselines instead of cross "
                                 "distillation (default: none, i.e. cross distillation)", choices=BASELINE_NAMES)

    def check(self) -> None:
        if self.shots is not None and self.n_samples is not None:
            raise CrossDistillError("give either shots (K per class) or n_samples, not both")
        if self.shots is None and self.n_samples is None:
            raise CrossDistillError("give shots (K per class) or n_samples")
        from crossdistill.device import check_device_name

        check_device_name(self.device)


RUN_KEYS = tuple(p.name for p in declared_params(RunSettings))


@dataclass
class Choice:
    """One plug-in section: the plug-in's name and the settings given to it."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


def registry(section: str) -> Mapping[str, type]:
    """name → class of the plug-ins of one section (all solver families for `solver`)."""
    if section == "method":
        from crossdistill.compression import METHODS

        return METHODS
    if section == "objective":
        from crossdistill.objectives import OBJECTIVES

        return OBJECTIVES
    from crossdistill.solvers import SOLVERS

    merged: dict[str, type] = {}
    for family in SOLVERS.values():
        merged.update(family)
    return merged


def solver_class(method: Any, solver: str) -> type | None:
    """The class that runs `solver` in one of the method's stages; None when the name is a solver
    of another method that every stage replaces by its own default (compression/composite.py).
    A name that some stage would run but does not have is refused here, before any work."""
    from crossdistill.compression.composite import stage_solver_name
    from crossdistill.solvers import SOLVERS

    found = None
    for stage, override in method.stages():
        family = SOLVERS.get(stage.solver_family, {})
        name = stage_solver_name(stage, override, solver)
        if name not in family:
            raise CrossDistillError(f"solver {solver!r} does not run method {method.name}; choose from "
                                    f"{sorted(family)}")
        if name == solver and found is None:
            found = family[name]
    return found


def plugin_classes(section: str) -> list[tuple[str, type]]:
    """(label, class) of every plug-in of a section; solvers labelled with their method, since
    several methods have a solver of the same name (closed-form, paper)."""
    if section != "solver":
        return [(f"{section} {name}", cls) for name, cls in registry(section).items()]
    from crossdistill.solvers import SOLVERS

    return [(f"solver {name} ({family})", cls) for family, reg in SOLVERS.items() for name, cls in reg.items()]


def finetune_class() -> type:
    from crossdistill.finetune import FinetuneConfig

    return FinetuneConfig


def owners(key: str, selected: Mapping[str, type | None]) -> list[str]:
    return [sec for sec, cls in selected.items() if cls is not None and key in {p.name for p in declared_params(cls)}]


def declared_anywhere(key: str) -> list[str]:
    return [label for sec in SECTIONS for label, cls in plugin_classes(sec)
            if key in {p.name for p in declared_params(cls)}]


def baseline_settings() -> tuple[str, ...]:
    """Keys read by baselines only (crossdistill.baselines), kept in `extra`."""
    from crossdistill.baselines.settings import BASELINE_SETTINGS

    return BASELINE_SETTINGS


def finetune_active(finetune: Mapping[str, Any]) -> bool:
    """Whether the fine-tune settings do anything: training epochs, or a BatchNorm re-estimate."""
    return (finetune.get("epochs") or 0) > 0 or finetune.get("bn") == "recalibrate"


def without_idle_views(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` without the views settings when no views are taken: they change nothing then. They
    were added after results were stored, so leaving them out keeps those runs' hashes as written
    and their report labels as they were (whatever the views defaults become)."""
    out = dict(values)
    if not out.get("views"):
        for key in ("views", "views_policy", "views_mixup"):
            out.pop(key, None)
    return out


def run_identity(values: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a run (for sweep hashes): the resolved config without settings that have no
    effect, so that changing the default of an inactive fine-tune setting does not make every
    stored run without a fine-tune look new."""
    out = without_idle_views(values)
    out.pop("capture_dir", None)  # where temporary files go: never a different run
    ft = out.get("finetune")
    if isinstance(ft, Mapping) and not finetune_active(ft):
        out["finetune"] = {}
    elif isinstance(ft, Mapping) and not (ft.get("epochs") or 0) > 0 and "mode" in ft:
        # Recalibration alone trains nothing, so the loss mode has no effect; 'kd' is what every
        # such run stored before 'hints' became the default, and their hashes stay as written.
        out["finetune"] = {**ft, "mode": "kd"}
    for section in ("method", "objective"):
        chosen = out.get(section)
        if isinstance(chosen, Mapping) and isinstance(chosen.get("params"), Mapping):
            off = _inactive(section, chosen)
            if off:
                out[section] = {**chosen, "params": {k: v for k, v in chosen["params"].items() if k not in off}}
    return out


def _inactive(section: str, chosen: Mapping[str, Any]) -> set[str]:
    cls = registry(section).get(chosen.get("name", ""))
    if cls is None:
        return set()
    try:
        return cls(**chosen["params"]).inactive()
    except Exception:  # an old row whose settings today's plug-in refuses: compared as stored
        return set()


def all_params(section: str) -> dict[str, list[tuple[str, Param]]]:
    """setting name → [(plug-in name, declaration)] over every plug-in of a section: what the CLI
    offers as flags and sweeps as grid keys."""
    out: dict[str, list[tuple[str, Param]]] = {}
    for label, cls in plugin_classes(section):
        for p in declared_params(cls):
            out.setdefault(p.name, []).append((label, p))
    return out
