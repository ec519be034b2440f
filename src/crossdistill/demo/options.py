"""What a demo run is asked to do, and the compression config it derives from that."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdistill.config import CompressConfig
from crossdistill.demo.teacher import TeacherRecipe

DEMO_KIND = "crossdistill-demo"  # marks report.json, so a rerun may replace its own old report
DEFAULT_OUT = Path("crossdistill-demo")


@dataclass
class DemoOptions:
    data: str = "fashion-mnist"
    out: Path = DEFAULT_OUT
    force: bool = False
    shots: int = 5
    keep: float = 0.5
    objective: str | None = None  # None: the library default (soft α 0, β 0.3)
    mu: float | None = None
    solver: str = "closed-form"
    seed: int = 0
    latency: bool = False  # CPU latency only when asked: on a busy machine it means little
    retrain: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    threads: int | None = None
    show_progress: bool = True
    recipe: TeacherRecipe = field(default_factory=TeacherRecipe)


def is_demo_report(folder: Path) -> bool:
    """True when `folder` holds a report written by an earlier demo (and nothing else of value)."""
    try:
        return json.loads((Path(folder) / "report.json").read_text()).get("kind") == DEMO_KIND
    except (OSError, ValueError, AttributeError):
        return False


def compress_config(opts: DemoOptions, **changes: Any) -> CompressConfig:
    """The run's config; `changes` override it (the prune-only baseline). Settings left None
    are not passed, so the config's own defaults apply (e.g. the model's default mu)."""
    settings = dict(model=opts.recipe.model, data=opts.data, eval_data=opts.data, shots=opts.shots,
                    seed=opts.seed, keep=opts.keep, objective=opts.objective, mu=opts.mu,
                    solver=opts.solver, latency=opts.latency)
    settings.update(changes)
    return CompressConfig(**{k: v for k, v in settings.items() if v is not None}).validate()
