"""How the JSON lines of the retired benchmark scripts map onto configs (sweep/importer.py).

Each format rebuilds the config the script passed to `CompressConfig` from what its lines
record, the way the script built it, and keeps everything else of the line in the row's report.
A setting a line does not record takes today's default, unless the import pins it (`--set`):
that is how the defaults of the day a file was written are restored (e.g. damping 0.001).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from crossdistill.config.sections import BASELINE_NAMES

DATA = "${CROSSDISTILL_DATA}"
WEIGHTS = {"resnet56": "resnet56-4bfd9763.th", "resnet20": "resnet20-12fca82f.th"}  # the shared teachers
TRAIN = f"{DATA}/cifar10/cifar10_train.npz"
EVAL = {"test": f"{DATA}/cifar10/cifar10_test1000.npz", "val": f"{TRAIN}[49000:]"}  # val: never the test images
# benchmarks/comparison.py's names for cross-distillation variants
OURS: dict[str, dict[str, Any]] = {"ours": {}, "ours-mixed": {"objective": "mixed"},
                                   "ours-nocross": {"objective": "nocross"},
                                   "magnitude": {"solver": "magnitude", "objective": "nocross"}}


@dataclass
class Imported:
    """One line as a run: its config (any keys CompressConfig reads), metric columns, a note."""

    config: dict[str, Any]
    metrics: dict[str, Any]
    note: str
    extra: dict[str, Any] = field(default_factory=dict)  # stored in the report beside the line


def cifar(model: str, eval_split: str = "test") -> dict[str, Any]:
    return {"model": model, "weights": f"{DATA}/weights/{WEIGHTS[model]}", "data": TRAIN,
            "eval_data": EVAL[eval_split], "latency": False}


def value(text: str) -> Any:
    """A value as the scripts wrote it in describe() strings and --set lists."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def described(text: str) -> dict[str, Any]:
    """'closed-form(selection=obs)' → {name: closed-form, params: {selection: obs}} (a plug-in's
    describe(); words without '=' such as paper(adam,...) are labels, not settings)."""
    m = re.fullmatch(r"\s*([^()]+?)\s*(?:\((.*)\))?\s*", text)
    name, inner = (m.group(1), m.group(2)) if m else (text, None)
    params = {k: value(v) for k, _, v in (p.partition("=") for p in (inner or "").split(",")) if _}
    return {"name": name, "params": params}


def overrides(pairs: list[str]) -> dict[str, Any]:
    """benchmarks' `--set KEY=VALUE` (JSON values, else the text; `extra.X` is the key X)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key.removeprefix("extra.")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.removeprefix("extra.")] = raw
    return out


def damping(recorded: float | None, shots: int, given: Mapping[str, Any]) -> dict[str, Any]:
    """The damping setting behind a recorded value: the automatic 0.1/K reads as the default."""
    if "damping" in given or recorded is None:
        return {}
    return {} if abs(float(recorded) - 0.1 / shots) < 1e-12 else {"damping": float(recorded)}


def comparison(rec: dict[str, Any], state: dict[str, Any]) -> Imported:
    """benchmarks/comparison.py and benchmarks/baselines.py lines (one per run)."""
    name = str(rec["method"])
    base = re.split(r"[+(\[]", name, maxsplit=1)[0]
    given = overrides(rec.get("overrides") or [])
    cfg = {**cifar(rec["model"], rec.get("eval", "test")), "shots": rec["shots"], "seed": rec["seed"], **given}
    cfg["device"] = str(rec.get("device") or "cpu").split(" ")[0]  # 'cuda (NVIDIA H100 ...)' → 'cuda'
    if rec.get("prune", "channels") == "sparsity":
        cfg.update(method="sparsity", sparsity=rec["sparsity"])
    else:
        cfg["keep"] = rec["keep"]
    if base in BASELINE_NAMES:
        cfg["baseline"] = base  # it fixes its own objective and solver: today's defaults stay
    else:  # what ran, as the plug-ins described themselves
        cfg.update(objective=described(rec["objective"]), solver=described(rec["solver"]))
    cfg.update(damping(rec.get("damping"), int(rec["shots"]), given))
    for key in ("finetune_bn", "finetune_mode"):
        if rec.get(key) is not None and key not in given:
            cfg[key] = rec[key]
    # These lines were written while 'kd' was the default mode, so a line that names none ran kd.
    cfg.setdefault("finetune_mode", "kd")
    if (rec.get("finetune_epochs") or 0) > 0:
        cfg["finetune_epochs"] = rec["finetune_epochs"]
    metrics = {"student_top1": rec.get("top1"), "teacher_top1": rec.get("teacher_top1"), "n_eval": rec.get("n_eval"),
               "student_params": rec.get("params"), "student_flops": rec.get("flops"),
               "compress_seconds": rec.get("compress_seconds"), "run_seconds": rec.get("wall_seconds")}
    return Imported(cfg, metrics, f"method {name}, tag {rec.get('tag') or '-'}, device {rec.get('device') or 'cpu'}")


def objective_grid(rec: dict[str, Any], state: dict[str, Any]) -> Imported:
    """benchmarks/objective_grid.py lines: objective 'soft:ALPHA:BETA' / 'mixed:MU' / a name."""
    name, *nums = str(rec["objective"]).split(":")
    params = {"mixed": lambda: {"mu": float(nums[0])},
              "soft": lambda: {"alpha": float(nums[0]), "beta": float(nums[1])}}.get(name, dict)()
    cfg = {**cifar(rec["model"], rec["eval"]), "keep": rec["keep"], "shots": rec["shots"], "seed": rec["seed"],
           "objective": {"name": name, "params": params}, "selection": rec["selection"],
           "damping": None if rec["damping"] == "auto" else float(rec["damping"])}
    metrics = {"student_top1": rec["top1"], "teacher_top1": rec.get("teacher_top1"), "n_eval": rec.get("n_eval"),
               "compress_seconds": rec.get("compress_seconds"), "run_seconds": rec.get("wall_seconds")}
    return Imported(cfg, metrics, f"point {rec['point']}")


def accuracy_push(rec: dict[str, Any], state: dict[str, Any]) -> Imported:
    """benchmarks/accuracy_push.py lines: a fine-tune variant from the closed-form student
    (`start: l1`: from the L1-pruned one). Intermediate-step curves stay in the report."""
    from crossdistill.finetune.settings import FinetuneSettings, config_of

    # Lines written before the script recorded the damping: the validation sweeps (tags sweep1-5)
    # predate the 0.1/K default and ran at 1e-3, the test lines (tag final) at 0.1/K; their
    # closed-form accuracies (cd_top1) equal those of objective_grid's runs at these dampings.
    # Hint fine-tunes of those early lines that name no `hints` matched blocks+penultimate, the
    # default of the day (accuracy_push.md, "How the settings were chosen").
    recorded = rec.get("damping")
    unrecorded = {"damping": 1e-3} if rec["eval"] == "val" else {}
    cfg = {**cifar("resnet56", rec["eval"]), "keep": 0.5, "shots": rec["shots"], "seed": rec["seed"],
           "objective": rec["objective"],
           **(damping(recorded, int(rec["shots"]), {}) if recorded is not None else unrecorded)}
    if rec.get("start") == "l1":
        cfg.update(solver="prune-only", selection="l1")
    if rec["variant"] != "none":  # the script's FinetuneSettings, read back as the config's section
        kw = dict(rec["settings"])
        if kw.get("hint_weight") and "hints" not in kw and recorded is None:
            kw["hints"] = "blocks+penultimate"
        ft = config_of(FinetuneSettings(**{"bn": "frozen", "seed": rec["seed"], **kw})).settings()
        if ft.get("batch_size") == 64:  # the script's default, the capture batch size: the config's None
            ft["batch_size"] = None
        cfg["finetune"] = ft
    metrics = {"student_top1": rec["top1"], "n_eval": rec.get("n_eval"), "compress_seconds": rec.get("seconds")}
    return Imported(cfg, metrics, f"variant {rec['variant']}, tag {rec.get('tag') or '-'}")


QUANT_SOFT = {"alpha": 0.25, "beta": 0.25}  # what benchmarks/quant_lowrank.py passed to every run


def quant_lowrank(rec: dict[str, Any], state: dict[str, Any]) -> Imported | None:
    """benchmarks/quant_lowrank.py cache lines; its teacher lines give the next lines' teacher."""
    key = rec["key"]
    if key["kind"] == "teacher":
        state[key["model"]] = rec
        return None
    objective = str(rec["objective"]).split("(")[0]
    cfg: dict[str, Any] = {**cifar(key["model"]), "damping": 1e-2, "shots": key["K"] or 1, "seed": key["seed"] or 0,
                           "solver": described(rec["solver"])["name"],
                           "objective": {"name": objective, "params": QUANT_SOFT if objective == "soft" else {}}}
    if key["kind"] == "quant":
        cfg.update(method="quant", bits=key["bits"])
    elif key["kind"] == "lowrank":
        cfg.update(method="lowrank", flops_ratio=key["flops_ratio"])
    else:  # combined: channel pruning alone, or then 4-bit quantization
        cfg.update(method="channels+quant" if "+" in key["label"] else "channels", keep=0.5, solver="closed-form")
        if "+" in key["label"]:
            cfg["bits"] = 4
    teacher = state.get(key["model"]) or {}
    metrics = {"student_top1": rec["top1"], "teacher_top1": teacher.get("top1"), "n_eval": rec.get("n_eval"),
               "student_flops": rec.get("flops"), "teacher_flops": teacher.get("flops"),
               "compress_seconds": rec.get("compress_s")}
    return Imported(cfg, metrics, f"label {key['label']}" + (", data-free" if key["K"] is None else ""),
                    {"size_bytes": rec.get("size"), "teacher_size_bytes": teacher.get("size")})


Converter = Callable[[dict[str, Any], dict[str, Any]], "Imported | None"]
IMPORT_FORMATS: dict[str, Converter] = {
    "comparison": comparison,
    "objective_grid": objective_grid,
    "accuracy_push": accuracy_push,
    "quant_lowrank": quant_lowrank,
}
