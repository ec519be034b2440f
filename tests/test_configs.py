"""Every YAML shipped under configs/ must load and validate with the current code: a renamed
option or a value the validation now rejects would otherwise surface only when a user runs it."""
from __future__ import annotations

from pathlib import Path

import pytest

from crossdistill.config import CompressConfig, load_yaml, resolve
from crossdistill.sweep import expand_vars, load_sweep

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
ENV = {"CROSSDISTILL_DATA": "/data"}  # paths are only checked when a run opens them


def test_configs_folder_is_found() -> None:
    assert CONFIGS, "configs/*.yaml not found beside tests/"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    data = load_yaml(path)
    if {"base", "grid", "runs"} & set(data):
        spec = load_sweep(path, env=ENV)
        assert spec.configs, f"{path.name} expands to no runs"
        assert all(isinstance(c, CompressConfig) for c in spec.configs)
        assert all("${" not in str(c.to_dict()) for c in spec.configs)
    else:
        cfg = resolve(expand_vars(data, ENV), {})
        for key, value in data.items():  # every key of the file reached the config unchanged (bar ${VARS})
            if not (isinstance(value, str) and "${" in value):
                assert getattr(cfg, key) == value, key
        assert "${" not in str(cfg.to_dict())


def test_accuracy_preset_is_the_measured_recipe() -> None:
    # docs/finetune.md and accuracy_push.md quote these numbers for this file; keep them in step
    cfg = resolve(expand_vars(load_yaml(CONFIG_DIR / "accuracy_resnet56.yaml"), ENV), {})
    assert (cfg.finetune_mode, cfg.finetune_views, cfg.finetune_bn) == ("hints", "affine", "frozen")
    assert (cfg.finetune_epochs, cfg.finetune_lr, cfg.finetune_mixup, cfg.finetune_ema) == (1800, 1e-3, 0.4, 0.998)
    assert (cfg.keep, cfg.objective) == (0.5, "soft")
