"""What the command line answers to settings that are valid elsewhere or mistyped (from a probe
that gave every option a bad value): one line that names the setting and what to do."""
from __future__ import annotations

import warnings

import pytest

from crossdistill.cli.main import main
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.finetune import FinetuneConfig


def test_a_setting_of_the_solver_a_method_runs_by_default_says_to_name_it():
    with pytest.raises(CrossDistillError, match=r"block_size=64 is a setting of solver gptq \(quant\).*method quant runs "
                                                r"solver gptq by default: name it \(--solver gptq"):
        CompressConfig(method="quant", block_size=64).validate()
    assert CompressConfig(method="quant", solver="gptq", block_size=64).validate().solver.params["block_size"] == 64


def test_a_solver_and_a_stage_solver_that_disagree_are_named_as_such():
    with pytest.raises(CrossDistillError, match=r"solver 'gptq' and the stage setting quant_solver 'rtn' disagree"):
        CompressConfig(method="quant", quant_solver="rtn", solver="gptq").validate()


def test_a_flag_whose_plug_ins_disagree_on_its_default_shows_each(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[default auto for solver gptq (quant), mse for solver rtn (quant)]" in text


def test_an_option_of_another_command_is_named_as_that_commands(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--model", "resnet20", "--out", str(tmp_path / "o"), "--fitnet-epochs", "3"])
    assert "(--fitnet-epochs is an option of crossdistill baseline)" in capsys.readouterr().err


def test_a_fine_tune_with_no_loss_names_the_weight_that_was_set():
    with pytest.raises(CrossDistillError, match=r"hint_weight 0 in mode 'hints' \(whose logit_weight is 0 by default\)"):
        FinetuneConfig(epochs=1, hint_weight=0).validate()
    with pytest.raises(CrossDistillError, match=r"logit_weight 0 in mode 'kd' leaves no loss"):
        FinetuneConfig(epochs=1, mode="kd", logit_weight=0).validate()


def test_a_registered_model_refuses_normalisation_and_size_of_ones_own_and_warns_without_weights(tmp_path):
    from crossdistill.run_setup import TeacherWarning, info_of, warn_untrained
    from sweep_helpers import write_npz_pair

    from crossdistill.data import load_image_data

    train, _ = write_npz_pair(tmp_path / "d", n_train=20, n_test=10)
    data = load_image_data(str(train), "train")
    for extra in ({"mean": [0.5]}, {"input_size": [3, 64, 64]}):
        cfg = CompressConfig(model="resnet20", **extra).validate()
        with pytest.raises(CrossDistillError, match=r"resnet20 is a registered model, with its own input size"):
            info_of(cfg, None, data)
    with pytest.warns(TeacherWarning, match=r"no --weights: the teacher is resnet20 with random weights"):
        warn_untrained(CompressConfig(model="resnet20").validate())


def test_evaluate_says_the_registry_not_the_file_holds_a_registered_models_normalisation(tmp_path, capsys):
    import torch

    from crossdistill.models import create_model

    weights = tmp_path / "plain.pt"
    torch.save(create_model("resnet20").state_dict(), weights)
    import numpy as np

    test = tmp_path / "test.npz"
    np.savez(test, x=np.zeros((10, 32, 32, 3), np.uint8), y=np.arange(10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", "--model", "resnet20", "--weights", str(weights), "--eval-data", str(test),
                     "--mean", "0.5", "--no-latency", "--quiet"]) == 2
    assert "resnet20 is a registered model, normalised as the registry says" in capsys.readouterr().err


def test_the_sweep_file_example_in_the_docs_is_valid_yaml_and_an_unquoted_variable_is_explained(tmp_path):
    from pathlib import Path

    import yaml

    from crossdistill.config import load_yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    block = text.split("## Sweep files", 1)[1].split("\n\n", 1)[0]
    example = "\n".join(line[4:] for line in block.splitlines() if line.startswith("    "))
    assert yaml.safe_load(example)["base"]["model"] == "resnet56"
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {model: resnet56, weights: ${CROSSDISTILL_DATA}/w.th}\n")
    with pytest.raises(CrossDistillError, match=r"quote a value that holds \$\{\.\.\.\} inside"):
        load_yaml(bad)


def test_paths_of_the_wrong_kind_or_empty_are_named_for_what_they_are(tmp_path, capsys):
    from crossdistill.data import load_image_data
    from crossdistill.data.align import class_list
    from crossdistill.models import load_weights, create_model

    folder = tmp_path / "somedir"
    folder.mkdir()
    with pytest.raises(CrossDistillError, match=r"weights .*somedir is a folder; give the weights file"):
        load_weights(create_model("resnet20"), folder)
    with pytest.raises(CrossDistillError, match=r"classes: .*somedir is a folder; give a file of class names"):
        class_list([str(folder)])
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(CrossDistillError, match=r"not an archive of arrays .*np.savez\(path, x=images, y=labels\)") as err:
        load_image_data(str(text), "train")
    assert "allow_pickle" not in str(err.value)
    for argv in (["compress", "--model", "resnet20", "--out", ""], ["report", "x.sqlite", "--out="]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "--out was given an empty value" in capsys.readouterr().err


def test_sizes_and_views_beyond_the_memory_are_refused_before_they_are_made(tmp_path, monkeypatch):
    """pack --size 100000 was killed by the kernel; --views 1000000 filled the memory."""
    import torch
    from PIL import Image

    import crossdistill.data.folder_pixels as pixels
    from crossdistill.calibration import calibration_images
    from crossdistill.data.readers_folder import read_image_folder

    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / c / f"{i}.png")
    monkeypatch.setattr(pixels, "available_bytes", lambda: 10**9)
    monkeypatch.setattr(pixels, "resize_crop", lambda *a: pytest.fail("an image was resized first"))
    with pytest.raises(CrossDistillError, match=r"4 images of 100000x100000 take .* give a smaller size \(--size\)"):
        read_image_folder(tmp_path / "imgs", size=100000)
    with pytest.raises(CrossDistillError, match=r"2 images with 100000 views each take .* ask for fewer views"):
        calibration_images(torch.zeros(2, 3, 32, 32), 100000)


def test_settings_that_the_rest_of_the_config_leaves_unread_are_pointed_out():
    from crossdistill.config import ConfigWarning

    with pytest.warns(ConfigWarning, match=r"budget_cost, min_keep given but method channels\(keep=0.5\) does not read "
                                           r"them \(settings of a global budget; budget is uniform\)"):
        CompressConfig(min_keep=0.3, budget_cost="output").validate()
    with pytest.warns(ConfigWarning, match=r"views_policy given but views is 0"):
        CompressConfig(views_policy="affine").validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        CompressConfig(min_keep=0.3, budget="global").validate()
        CompressConfig(views=2, views_policy="affine").validate()


def test_a_full_config_at_its_defaults_is_not_told_its_settings_are_idle():
    """to_dict() writes every setting (a run folder's config.yaml, cfg.updated(), the Ray backend)."""
    from crossdistill.config import ConfigWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        cfg = CompressConfig(model="resnet20").validate()
        cfg.updated(threads=2)
        CompressConfig.from_dict(cfg.to_dict())


def test_a_numeric_reference_still_to_come_is_no_typo():
    from crossdistill.reporting.kinds.base import check_matched

    check_matched([{"keep": 0.25}, {"keep": 0.75}], {"keep": "0.5"}, "reference")
    with pytest.raises(CrossDistillError, match="did you mean objective=nocross"):
        check_matched([{"objective": "nocross"}, {"objective": "soft"}], {"objective": "nocros"}, "reference")


def test_the_demo_takes_fashion_mnist_by_any_of_its_names(tmp_path, monkeypatch):
    import crossdistill.demo.run as demo_run
    import crossdistill.pipeline as pipeline
    from crossdistill.demo import DemoOptions, run_demo
    from sweep_helpers import fashion_like

    monkeypatch.setattr(pipeline, "load_with_progress", lambda *a, **k: fashion_like(20, 0))

    def reached(*args, **kwargs):
        raise RuntimeError("past the data check")

    monkeypatch.setattr(demo_run, "get_teacher", reached)
    for name in ("fashion_mnist", "FashionMNIST", "fashion-mnist[:100]"):
        with pytest.raises(RuntimeError, match="past the data check"):
            run_demo(DemoOptions(data=name, out=tmp_path / "d", show_progress=False))
