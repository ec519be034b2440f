"""Every setting `crossdistill.compress(..., **settings)` and `crossdistill compress` take, from
the plug-ins' own declarations: what `--help` prints, as data a program (or a person at a
Python prompt) can read."""
from __future__ import annotations

from typing import Any

from crossdistill.config.sections import DEFAULT_NAMES, FINETUNE_PREFIX, RunSettings, finetune_class, plugin_classes
from crossdistill.params import Param, declared_params

# Run settings of the command line whose job crossdistill.compress's own arguments do: refused
# there as keyword settings (a CompressConfig takes them, so they would be accepted, then unused).
NOT_API_SETTINGS = {
    "weights": "the model comes with its weights: load them first (model.load_state_dict(torch.load(...)))",
    "input_size": "the inputs' size is that of the data given",
}
# ... and compress's own arguments: neither is a keyword setting there.
_ARGUMENTS = ("model", "data", "eval_data", "shots", "n_samples", "seed", "mean", "std", *NOT_API_SETTINGS)


def _entry(p: Param, owner: str) -> dict[str, Any]:
    return {"default": p.default, "range": p.range_text() or None, "help": p.help, "for": owner}


def settings() -> dict[str, dict[str, Any]]:
    """Setting name → its default, range (or choices), help text and the plug-in it belongs to
    (`for`: 'run', 'fine-tune', 'method channels', 'objective mixed', 'solver gptq (quant)', ...).
    A name several plug-ins declare (a solver's `selection`) appears once per owner, as
    `name@owner`. The names (before any `@owner`) are what `crossdistill.compress(model, data,
    **settings)` takes, each applying to the plug-in chosen; the command line takes the same as
    `--name-with-dashes`."""
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, entry: dict[str, Any]) -> None:
        out[name if name not in out else f"{name}@{entry['for']}"] = entry

    for section, what in (("method", "compression method"), ("objective", "layer-wise loss"),
                          ("solver", "solver of the method (default: the method's own)")):
        names = sorted({label.split(" ")[1] for label, _ in plugin_classes(section)})
        add(section, {"default": DEFAULT_NAMES[section], "range": "one of " + ", ".join(names), "help": what,
                      "for": "run"})
    for p in declared_params(RunSettings):
        if p.name not in _ARGUMENTS:
            add(p.name, _entry(p, "run"))
    for p in declared_params(finetune_class()):
        add(FINETUNE_PREFIX + p.name, _entry(p, "fine-tune"))
    for section in ("method", "objective", "solver"):
        for label, cls in plugin_classes(section):
            for p in declared_params(cls):
                add(p.name, _entry(p, label))
    return out
