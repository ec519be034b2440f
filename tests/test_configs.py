"""Every YAML shipped under configs/ must load and validate with the current code: a renamed
option or a value the validation now rejects would otherwise surface only when a user runs it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pytest

from crossdistill.config import ALIASES, FINETUNE_PREFIX, RUN_KEYS, SECTIONS, CompressConfig, load_yaml, resolve
from crossdistill.errors import CrossDistillError
from crossdistill.sweep import config_hash, expand_grid, expand_vars, flat_settings, load_sweep

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
ENV = {"CROSSDISTILL_DATA": "/data"}  # paths are only checked when a run opens them


def is_sweep(data: Mapping[str, Any]) -> bool:
    return bool({"base", "grid", "runs"} & set(data))


def routed(cfg: CompressConfig, key: str) -> Any:
    """Where a flat key of a config file ended up: a run setting, a plug-in's name, a fine-tune
    setting, or the setting of exactly one selected plug-in (`keep` → method, `mu` → objective)."""
    key = ALIASES.get(key, key)
    if key in RUN_KEYS:
        return getattr(cfg, key)
    if key in SECTIONS:
        return getattr(cfg, key).name
    if key.startswith(FINETUNE_PREFIX):
        return cfg.finetune[key[len(FINETUNE_PREFIX):]]
    if key.startswith("finetune."):  # a sweep grid's spelling of the same setting
        return cfg.finetune[key[len("finetune."):]]
    if key in cfg.extra:  # a baseline's own setting (fitnet_*)
        return cfg.extra[key]
    flat = flat_settings(cfg)
    homes = [f"{s}.{key}" for s in SECTIONS if f"{s}.{key}" in flat]
    assert len(homes) == 1, f"{key} reached {homes or 'no plug-in'}"
    # The sectioned form says the same as the dotted one.
    section, name = homes[0].split(".", 1)
    assert getattr(cfg, section).params[name] == flat[homes[0]]
    return flat[homes[0]]


def assert_keys_reached(cfg: CompressConfig, values: Mapping[str, Any], where: str) -> None:
    """Every key of a file reached the config unchanged (bar ${VARS}, checked separately)."""
    for key, value in values.items():
        if isinstance(value, str) and "${" in value:
            continue
        got = routed(cfg, key)
        assert got == value and type(got) is type(value), f"{where}: {key} = {value!r} became {got!r}"


def test_configs_folder_is_found() -> None:
    assert CONFIGS, "configs/*.yaml not found beside tests/"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    data = load_yaml(path)
    if is_sweep(data):
        spec = load_sweep(path, env=ENV)
        assert spec.configs, f"{path.name} expands to no runs"
        assert all(isinstance(c, CompressConfig) for c in spec.configs)
        assert all("${" not in str(c.to_dict()) for c in spec.configs)
        # Every key of each expanded point (base, grid point, runs entry) reached its run. Points
        # are duplicates only where a runs entry pins a grid key on purpose (a first-K draw does not
        # depend on the seed: one run, not one per grid seed); each is then the run it duplicates.
        points = expand_grid(data.get("base"), data.get("grid"), data.get("runs"))
        by_hash = dict(zip(spec.hashes, spec.configs))
        assert len(by_hash) == len(spec.configs)
        point_hashes = [config_hash(CompressConfig.from_dict(expand_vars(p, ENV))) for p in points]
        assert set(point_hashes) == set(spec.hashes)
        grid_keys = set(data.get("grid") or {})
        for i, (h, point) in enumerate(zip(point_hashes, points)):
            if point_hashes.index(h) != i:  # a duplicate: only from a runs entry that pins a grid key
                entry = (data.get("runs") or [{}])[i % len(data.get("runs") or [{}])]
                assert grid_keys & set(entry), f"{path.name} run {i + 1} duplicates run {point_hashes.index(h) + 1}"
            assert_keys_reached(by_hash[h], point, f"{path.name} run {i + 1}")
    else:
        cfg = resolve(expand_vars(data, ENV), {})
        assert_keys_reached(cfg, data, path.name)
        assert "${" not in str(cfg.to_dict())


def test_routed_reads_every_kind_of_key() -> None:
    # The helper above must not pass by reading defaults: each kind of key shows its own value.
    cfg = CompressConfig(model="resnet20", prune="channels", keep=0.25, objective="mixed", mu=0.7, solver="paper",
                         lr=0.01, finetune_epochs=3)
    assert routed(cfg, "model") == "resnet20" and routed(cfg, "prune") == "channels"
    assert (routed(cfg, "keep"), routed(cfg, "mu"), routed(cfg, "lr")) == (0.25, 0.7, 0.01)
    assert (routed(cfg, "objective"), routed(cfg, "solver"), routed(cfg, "finetune_epochs")) == ("mixed", "paper", 3)
    with pytest.raises(AssertionError, match="no plug-in"):
        routed(cfg, "alpha")  # a soft setting: the mixed objective has none


def test_accuracy_preset_is_the_measured_recipe() -> None:
    # docs/finetune.md and accuracy_push.md quote these numbers for this file; keep them in step
    cfg = resolve(expand_vars(load_yaml(CONFIG_DIR / "accuracy_resnet56.yaml"), ENV), {})
    ft = cfg.finetune
    assert (ft["mode"], ft["views"], ft["bn"]) == ("hints", "affine", "frozen")
    assert (ft["epochs"], ft["lr"], ft["mixup"], ft["ema"]) == (1800, 1e-3, 0.4, 0.998)
    assert (cfg.method.name, cfg.method.params["keep"], cfg.objective.name) == ("channels", 0.5, "soft")


# --- a typo in a config is refused, naming the valid keys ----------------------------------------

def _shipped_style(tmp_path: Path, **changes: Any) -> Path:
    """compress_resnet56.yaml with some keys changed: the shape of config a user copies and edits."""
    import yaml

    data = {**load_yaml(CONFIG_DIR / "compress_resnet56.yaml"), **changes}
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _refused(path: Path) -> str:
    with pytest.raises(CrossDistillError) as exc:
        resolve(expand_vars(load_yaml(path), ENV), {})
    return str(exc.value)


def test_a_typo_under_extra_is_refused_naming_the_valid_keys(tmp_path: Path) -> None:
    # `extra: {sparse_mask: obc}` is how older configs set the sparse solver's mask.
    good = _shipped_style(tmp_path, prune="sparsity", keep=None, objective="soft", mu=None,
                          extra={"sparse_mask": "obc"})
    cfg = resolve(expand_vars(load_yaml(good), ENV), {})
    assert (cfg.method.name, cfg.solver.params["sparse_mask"]) == ("sparsity", "obc")
    bad = _shipped_style(tmp_path, prune="sparsity", keep=None, objective="soft", mu=None,
                         extra={"sparse_maks": "obc"})
    message = _refused(bad)
    assert "unknown config key 'sparse_maks'" in message
    assert "'sparse_mask'" in message and "'sparsity'" in message and "'model'" in message  # the valid keys


def test_a_top_level_typo_is_refused_naming_the_valid_keys(tmp_path: Path) -> None:
    message = _refused(_shipped_style(tmp_path, shtos=5))
    assert "unknown config key 'shtos'" in message
    assert "'shots'" in message and "'keep'" in message and "'finetune_epochs'" in message
    # A typo in a plug-in's section names that plug-in's settings.
    message = _refused(_shipped_style(tmp_path, objective={"name": "mixed", "params": {"nu": 0.9}}, mu=None))
    assert "objective mixed" in message and "'nu'" in message and "['mu']" in message


def test_a_typo_in_a_shipped_sweep_is_refused(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "smoke.yaml").read_text()
    assert "keep: 0.5" in text
    (tmp_path / "typo.yaml").write_text(text.replace("keep: 0.5", "kepe: 0.5"))
    with pytest.raises(CrossDistillError, match=r"run 1 .*unknown config key 'kepe'.*'keep'"):
        load_sweep(tmp_path / "typo.yaml", env=ENV)


@pytest.mark.parametrize("method, solver, choices", [
    ("quant", "prune-only", r"\['gptq', 'rtn'\] \(or leave it out: gptq\)"),
    ("lowrank", "paper", r"\['svd', 'svd-plain'\] \(or leave it out: svd\)"),
    ("sparsity", "gptq", r"\['closed-form', 'magnitude', 'paper', 'sparsegpt'\]"),
])
def test_a_solver_the_method_does_not_run_is_refused_not_replaced(method, solver, choices):
    # Quant and low rank have no closed-form/prune-only stage: a named solver of another method
    # used to be swapped for their default without a word, the report still naming it.
    with pytest.raises(CrossDistillError, match=rf"solver '{solver}' does not run method {method}; choose from {choices}"):
        CompressConfig(model="resnet20", method=method, solver=solver).validate()
    # The default name stands for each method's own default; a staged method takes a solver of
    # one of its stages and gives the others their defaults.
    assert CompressConfig(model="resnet20", method=method).validate().method.name == method
    CompressConfig(model="resnet20", method="channels+quant", solver="paper").validate()


@pytest.mark.parametrize("target", ["flops", "parameters"])
def test_a_keep_beside_a_size_target_is_refused_not_dropped(target):
    # --keep 0.6 --flops 0.5 ran flops 0.5 and said nothing of the keep.
    with pytest.raises(CrossDistillError, match=rf"give either keep \(0.6\) or {target} \(0.5\)"):
        CompressConfig(model="resnet20", keep=0.6, **{target: 0.5}).validate()
    CompressConfig(model="resnet20", **{target: 0.5}).validate()


def test_a_config_with_a_key_twice_or_not_text_is_refused(tmp_path):
    """YAML keeps the last of two equal keys without a word (`keep: 0.5` ... `keep: 0.25` ran
    0.25); a binary file gave a UnicodeDecodeError traceback."""
    from crossdistill.config import load_yaml
    from crossdistill.errors import CrossDistillError

    twice = tmp_path / "twice.yaml"
    twice.write_text("keep: 0.5\nshots: 1\nkeep: 0.25\n")
    with pytest.raises(CrossDistillError, match=r"key 'keep' is given twice \(line 3"):
        load_yaml(twice)
    nested = tmp_path / "nested.yaml"
    nested.write_text("base: {keep: 0.5, keep: 0.3}\n")
    with pytest.raises(CrossDistillError, match="given twice"):
        load_yaml(nested)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\x00\xff\xfe")
    with pytest.raises(CrossDistillError, match="is not a text file"):
        load_yaml(binary)
    fine = tmp_path / "fine.yaml"
    fine.write_text("runs: [{objective: soft}, {objective: soft}]\nbase: {keep: 0.5}\n")
    assert load_yaml(fine)["base"] == {"keep": 0.5}
