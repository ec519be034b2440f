"""A folder of images per class: read as a data set (`--data FOLDER`), packed into an .npz
(`crossdistill pack`), with one label per class subfolder and the pixels as stored."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossdistill.cli.main import main
from crossdistill.data import load_image_data
from crossdistill.data.readers_folder import read_image_folder
from crossdistill.errors import CrossDistillError


def write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10), mode: str = "RGB",
                 seed: int = 0) -> dict[Path, np.ndarray]:
    """`classes`: name -> image count; returns every file's pixels (height x width [x 3])."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    written = {}
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"img{i}.png")
            written[root / name / f"img{i}.png"] = pixels
    return written


def test_classes_are_sorted_subfolders_and_pixels_are_exact(tmp_path):
    written = write_folder(tmp_path / "d", {"zebra": 2, "ant": 3, "empty": 0})
    (tmp_path / "d" / "ant" / "notes.txt").write_text("not an image")
    data = load_image_data(tmp_path / "d")
    assert data.class_names == ["ant", "empty", "zebra"] and data.num_classes == 3
    assert data.x.shape == (5, 10, 12, 3) and data.y.tolist() == [0, 0, 0, 2, 2]
    assert np.array_equal(data.x[3], written[tmp_path / "d" / "zebra" / "img0.png"])  # PNG: lossless


def test_grayscale_images_give_one_channel(tmp_path):
    write_folder(tmp_path / "g", {"a": 2, "b": 1}, mode="L")
    assert load_image_data(tmp_path / "g").x.shape == (3, 10, 12, 1)


def test_train_and_test_take_train_classes(tmp_path):
    write_folder(tmp_path / "s" / "train", {"a": 2, "b": 2, "c": 1})
    write_folder(tmp_path / "s" / "test", {"c": 2}, seed=1)  # classes a and b have no test images
    test = load_image_data(tmp_path / "s", "test")
    assert test.y.tolist() == [2, 2] and test.num_classes == 3
    # The test folder given on its own (--eval-data photos/test) keeps train/'s labels too.
    alone = load_image_data(tmp_path / "s" / "test", "test")
    assert alone.y.tolist() == [2, 2] and alone.class_names == ["a", "b", "c"]
    write_folder(tmp_path / "s" / "test", {"d": 1}, seed=2)
    with pytest.raises(CrossDistillError, match=r"classes \['d'\] are not among .*train's \['a', 'b', 'c'\]"):
        load_image_data(tmp_path / "s", "test")
    only_test = tmp_path / "t"
    write_folder(only_test / "test", {"a": 1})
    with pytest.raises(CrossDistillError, match="no train/ folder of class subfolders, which names the classes"):
        load_image_data(only_test, "test")


def test_nested_folders_exif_16_bit_and_channels(tmp_path):
    """Every image below a class folder counts; a sideways-stored photo is turned upright; 16-bit
    gray is scaled, not clipped; a gray test set of an RGB training set stays RGB."""
    root = tmp_path / "n"
    write_folder(root / "train", {"a": 1, "b": 1}, size=(8, 6))
    (root / "train" / "a" / "deeper").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "train" / "a" / "deeper" / "x.jfif", "JPEG")
    assert load_image_data(root).y.tolist() == [0, 0, 1]
    wide = np.zeros((24, 32), np.uint8)
    wide[:, :16] = 255  # left half white as stored; EXIF 6 says: rotate 90 degrees clockwise to view
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(wide).convert("RGB").save(root / "train" / "b" / "phone.jpg", exif=exif, quality=100,
                                               subsampling=0)
    deep = np.array([[0, 8000, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    write_folder(root / "test", {"a": 1}, size=(6, 8), mode="L")
    (root / "test" / "b").mkdir()
    (tmp_path / "deep.png").rename(root / "test" / "b" / "deep.png")
    test = read_image_folder(root, "test", size=4)
    assert test.x.shape == (2, 4, 4, 3)  # RGB like train, though every test image is gray
    assert test.x[1, 0, :, 0].tolist() == [0, 31, 128, 255]  # 16 bits scaled to 8
    upright = read_image_folder(root, size=6).x[3, :, :, 0]  # b/phone.jpg, after a/deeper/x.jfif, a/img0, b/img0
    assert upright[:2].mean() > 200 and upright[-2:].mean() < 50  # the white half is now on top


def test_a_missing_class_in_separate_npz_files_is_mapped_by_name(tmp_path):
    from crossdistill.data.arrays import ImageArrays
    from crossdistill.data.align import align_classes

    train = ImageArrays(x=np.zeros((3, 2, 2, 3), np.uint8), y=np.array([0, 1, 2]), num_classes=3,
                        class_names=["ant", "bee", "cat"])
    test = ImageArrays(x=np.zeros((2, 2, 2, 3), np.uint8), y=np.array([0, 1]), num_classes=2,
                       class_names=["bee", "cat"])
    aligned = align_classes(test, train.class_names)
    assert aligned.y.tolist() == [1, 2] and aligned.class_names == ["ant", "bee", "cat"]
    stranger = ImageArrays(x=np.zeros((1, 2, 2, 3), np.uint8), y=np.array([0]), num_classes=1,
                           class_names=["dog"])
    with pytest.raises(CrossDistillError, match=r"classes \['dog'\] that the training data does not have"):
        align_classes(stranger, train.class_names)
    unnamed = ImageArrays(x=np.zeros((1, 2, 2, 3), np.uint8), y=np.array([0]), num_classes=1)
    assert align_classes(unnamed, train.class_names) is unnamed  # nothing to go by: labels as they are


def test_sizes_must_agree_unless_a_size_is_given(tmp_path):
    write_folder(tmp_path / "m", {"a": 1}, size=(30, 20))
    write_folder(tmp_path / "m", {"b": 1}, size=(20, 40), seed=1)
    with pytest.raises(CrossDistillError, match=r"differ in size .*a/img0.png 30x20.*crossdistill pack .* --size HxW"):
        load_image_data(tmp_path / "m")
    data = read_image_folder(tmp_path / "m", size=16)
    assert data.x.shape == (2, 16, 16, 3)


def test_the_resize_keeps_the_centre(tmp_path):
    """Shorter side to the size, then the centre: a wide image's left and right edges go."""
    img = np.zeros((20, 60, 3), dtype=np.uint8)
    img[:, 26:34] = 255  # a white band in the middle; the crop keeps columns 20-40
    (tmp_path / "c" / "a").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "c" / "a" / "wide.png")
    x = read_image_folder(tmp_path / "c", size=10).x[0]
    assert x.shape == (10, 10, 3) and x[:, 4:6].min() > 200 and x[:, 0].max() < 60 and x[:, -1].max() < 60


def test_unreadable_image_is_named(tmp_path):
    write_folder(tmp_path / "u", {"a": 1})
    (tmp_path / "u" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CrossDistillError, match=r"broken.jpg: not a readable image"):
        load_image_data(tmp_path / "u")
    # Every broken file in one message: a folder of a web scrape must not need a run per file.
    Image.new("RGB", (12, 10)).save(tmp_path / "whole.jpg")
    (tmp_path / "u" / "a" / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:300])  # header intact
    (tmp_path / "u" / "a" / "empty.png").write_bytes(b"")
    with pytest.raises(CrossDistillError, match=r"3 files are not readable images: .*a/broken.jpg: not a readable image.*"
                                                r"a/cut.jpg: not a readable image.*a/empty.png: not a readable image"):
        load_image_data(tmp_path / "u")


def test_pack_writes_an_npz_that_reads_as_the_folder(tmp_path, capsys):
    write_folder(tmp_path / "p", {"b": 2, "a": 1}, size=(24, 18))
    out = tmp_path / "packed.npz"
    assert main(["pack", str(tmp_path / "p"), "--out", str(out), "--size", "16"]) == 0
    assert "packed 3 images of 2 classes (16x16, 3 channels)" in capsys.readouterr().out
    packed, folder = load_image_data(out), read_image_folder(tmp_path / "p", size=16)
    assert np.array_equal(packed.x, folder.x) and np.array_equal(packed.y, folder.y)
    assert packed.class_names == ["a", "b"] and packed.num_classes == 2
    assert main(["pack", str(tmp_path / "p"), "--out", str(out)]) != 0  # exists: refused without --force
    assert "already exists" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "nowhere"), "--out", str(tmp_path / "n.npz")]) != 0
    assert not (tmp_path / "n.npz").exists()
    (tmp_path / "dir.npz").mkdir()
    assert main(["pack", str(tmp_path / "p"), "--out", str(tmp_path / "dir.npz"), "--force"]) != 0
    assert "is a folder" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "p"), "--split", "test", "--out", str(tmp_path / "t.npz")]) != 0
    assert "has no train/ and test/ folders" in capsys.readouterr().err and not (tmp_path / "t.npz").exists()


def test_compress_reads_a_folder(tmp_path, capsys):
    import textwrap

    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    """))
    write_folder(tmp_path / "imgs" / "train", {"a": 4, "b": 4, "c": 4}, size=(16, 16))
    write_folder(tmp_path / "imgs" / "test", {"a": 2, "b": 2, "c": 2}, size=(16, 16), seed=3)
    out = tmp_path / "run"
    assert main(["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "imgs"),
                 "--eval-data", str(tmp_path / "imgs"), "--shots", "2", "--quiet", "--out", str(out)]) == 0
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["student"]["n_eval"] == 6 and len(report["fewshot_indices"]) == 6


def test_separate_folders_score_against_the_right_classes(tmp_path):
    """--data tr --eval-data te, te lacking the first class: te's labels follow tr's classes by
    name, so the teacher's accuracy is that of its real predictions (it shifted by one before)."""
    import torch
    from torch import nn

    import crossdistill

    write_folder(tmp_path / "tr", {"a": 3, "b": 3, "c": 3}, size=(8, 8))
    written = write_folder(tmp_path / "te", {"b": 2, "c": 2}, size=(8, 8), seed=5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 3)).eval()
    _, report = crossdistill.compress(model, tmp_path / "tr", eval_data=tmp_path / "te", shots=2, method="quant",
                                      bits=8, show_progress=False)
    x = torch.as_tensor(np.stack(list(written.values())), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    truth = torch.tensor([1, 1, 2, 2])  # b and c in tr's numbering
    with torch.no_grad():
        predicted = model(x).argmax(1)
    expected, shifted = (100.0 * float((predicted == t).float().mean()) for t in (truth, truth - 1))
    assert expected != shifted  # the check can tell the two numberings apart
    assert report["teacher"]["top1"] == pytest.approx(expected)


def test_the_saved_student_keeps_the_class_names_and_evaluate_numbers_by_them(tmp_path, capsys):
    """`evaluate` on a lone test folder lacking a class scores as compress did: the student's
    file records the training classes and the test labels follow them."""
    import json
    import textwrap

    import crossdistill

    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(6, 3))
    """))
    write_folder(tmp_path / "tr", {"a": 3, "b": 3, "c": 3}, size=(8, 8))
    write_folder(tmp_path / "te", {"b": 3, "c": 3}, size=(8, 8), seed=5)
    out = tmp_path / "run"
    assert main(["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "tr"),
                 "--eval-data", str(tmp_path / "te"), "--shots", "2", "--method", "quant", "--bits", "8",
                 "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert crossdistill.load(out).crossdistill_class_names == ["a", "b", "c"]
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(out), "--eval-data", str(tmp_path / "te"), "--no-latency", "--json",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == report["student"]["top1"]


def test_a_saved_documents_class_names_are_checked():
    import json

    from crossdistill.persistence.spec import FORMAT, parse_info

    doc = {"format": FORMAT, "format_version": 1, "model": "m", "spec": {}, "num_classes": 3}
    assert parse_info(json.dumps({**doc, "class_names": ["a", "b", "c"]})).class_names == ["a", "b", "c"]
    assert parse_info(json.dumps(doc)).class_names is None  # files from before: no names
    for bad in (["a", "b"], ["a", "b", 3], "abc"):
        with pytest.raises(CrossDistillError, match="'class_names' must be a list of strings, one per class"):
            parse_info(json.dumps({**doc, "class_names": bad}))


def test_a_training_folder_missing_a_class_is_refused(tmp_path, capsys):
    # Classes are numbered by sorted folder name: without "a", b became 0 and c 1 for a model
    # whose b is 1, so every label was shifted and every score silently wrong.
    import textwrap

    import torch
    from torch import nn

    import crossdistill

    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    """))
    write_folder(tmp_path / "tr", {"b": 3, "c": 3}, size=(8, 8))
    message = r"2 classes \(b, c\) for a model that predicts 3: classes are numbered by their sorted names"
    out = tmp_path / "run"
    assert main(["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "tr"),
                 "--shots", "2", "--quiet", "--out", str(out)]) == 2
    assert "an empty folder for a class without images" in capsys.readouterr().err and not out.exists()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 3)).eval()
    with pytest.raises(CrossDistillError, match=message):
        crossdistill.compress(model, tmp_path / "tr", shots=2, show_progress=False)
    (tmp_path / "tr" / "a").mkdir()  # the way out the message names: the class is there, empty
    with pytest.warns(UserWarning, match=r"cover 2 of the model's 3 classes \(.*; none of class 0 \(a\)\)"):
        _, report = crossdistill.compress(model, tmp_path / "tr", shots=2, method="quant", bits=8,
                                          show_progress=False)
    assert report["fewshot_class_counts"] == [0, 2, 2]


def test_a_runs_config_reruns_from_another_directory(tmp_path, monkeypatch, capsys):
    # The run folder's config.yaml kept the relative paths typed in one directory: from any
    # other, `--config run/config.yaml` could find neither the model file nor the data.
    import textwrap

    import yaml

    work = tmp_path / "work"
    work.mkdir()
    (work / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    """))
    write_folder(work / "imgs", {"a": 3, "b": 3}, size=(8, 8))
    monkeypatch.chdir(work)
    assert main(["compress", "--model", "net.py:make", "--data", "imgs", "--eval-data", "imgs[2:6]", "--shots", "2",
                 "--quiet", "--out", "run"]) == 0
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert saved["model"] == f"{work / 'net.py'}:make" and saved["data"] == str(work / "imgs")
    assert saved["eval_data"] == f"{work / 'imgs'}[2:6]"  # a slice of a data set keeps its slice
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "--config", str(work / "run" / "config.yaml"), "--quiet", "--out", "again"]) == 0
    first, again = (yaml.safe_load((d / "config.yaml").read_text()) for d in (work / "run", tmp_path / "again"))
    assert first == again


def test_grayscale_images_for_an_rgb_model_are_told_to_convert(tmp_path, capsys):
    # The advice was "give the input size the model expects", which --input-size 3 H W then
    # refused in turn: only converting the images helps.
    import textwrap

    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(6, 2))
    """))
    write_folder(tmp_path / "gray", {"a": 3, "b": 3}, size=(8, 8), mode="L")
    run = ["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "gray"), "--shots", "2",
           "--quiet"]
    assert main([*run, "--out", str(tmp_path / "r1")]) == 2
    assert "its first conv takes 3 channels and the inputs have 1: give inputs of 3 channels" in capsys.readouterr().err
    assert main([*run, "--input-size", "3", "8", "8", "--out", str(tmp_path / "r2")]) == 2
    assert "expects (8, 8, 3): convert the images to 3 channels" in capsys.readouterr().err


def test_evaluate_refuses_a_test_folder_missing_a_class_for_a_model_without_class_names(tmp_path, capsys):
    import textwrap

    import torch

    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(6, 3))
    """))
    import importlib.util

    spec = importlib.util.spec_from_file_location("net", tmp_path / "net.py")
    net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(net)
    torch.save(net.make().state_dict(), tmp_path / "w.pt")
    write_folder(tmp_path / "te", {"b": 2, "c": 2}, size=(8, 8))
    run = ["evaluate", "--model", f"{tmp_path / 'net.py'}:make", "--weights", str(tmp_path / "w.pt"), "--no-latency"]
    assert main([*run, "--eval-data", str(tmp_path / "te")]) == 2
    assert "2 classes (b, c) for a model that predicts 3" in capsys.readouterr().err
    (tmp_path / "te" / "a").mkdir()
    assert main([*run, "--eval-data", str(tmp_path / "te")]) == 0


def test_size_height_width_scales_to_cover_and_crops_the_centre(tmp_path, capsys):
    # A model of 48x64 inputs (as --input-size C H W gives them) needs images of that shape, not squares.
    img = np.zeros((40, 120, 3), dtype=np.uint8)
    img[:, 56:64] = 255  # a band in the middle column; cover 12x24 -> scaled by 0.3 to 12x36, crop cols 6-30
    (tmp_path / "w" / "a").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "w" / "a" / "wide.png")
    x = read_image_folder(tmp_path / "w", size=(12, 24)).x[0]
    assert x.shape == (12, 24, 3) and x[:, 11:13].min() > 200 and x[:, 0].max() < 60 and x[:, -1].max() < 60
    tall = np.zeros((90, 30, 3), dtype=np.uint8)
    (tmp_path / "t" / "a").mkdir(parents=True)
    Image.fromarray(tall).save(tmp_path / "t" / "a" / "tall.png")
    assert read_image_folder(tmp_path / "t", size=(12, 24)).x.shape == (1, 12, 24, 3)  # width decides the scale
    out = tmp_path / "hw.npz"
    # One token, so that the option may come before the folder (several numbers swallowed it).
    assert main(["pack", "--size", "12x24", str(tmp_path / "w"), "--out", str(out)]) == 0
    assert "(12x24, 3 channels)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pack", str(tmp_path / "w"), "--out", str(tmp_path / "x.npz"), "--size", "1x2x3"])
    assert "give one side (224) or height x width (48x64)" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(CrossDistillError, match="image size must be"):
        read_image_folder(tmp_path / "w", size=(0, 5))


def test_a_folder_read_as_rgb_because_of_a_few_colour_files_names_them(tmp_path, capsys):
    # One RGB file among gray ones makes the whole folder RGB; a 1-channel model was then told
    # to convert "grayscale to RGB", the wrong way round, and nothing said which file did it.
    import textwrap

    write_folder(tmp_path / "g", {"a": 3, "b": 3}, size=(8, 8), mode="L")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(tmp_path / "g" / "b" / "stray.png")
    data = read_image_folder(tmp_path / "g")
    assert data.x.shape[-1] == 3 and "1 of the folder's 7 images is not grayscale (b/stray.png (RGB))" in data.note
    write_folder(tmp_path / "allgray", {"a": 2}, size=(8, 8), mode="L")
    assert read_image_folder(tmp_path / "allgray").note == ""  # all gray: nothing to say
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 2))
    """))
    run = ["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "g"), "--shots", "2",
           "--quiet", "--input-size", "1", "8", "8", "--out", str(tmp_path / "r")]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "convert the images to 1 channel (RGB to grayscale: PIL's Image.open(f).convert('L'))" in err
    assert "b/stray.png (RGB)" in err and "grayscale to RGB" not in err
    # Without --input-size the channels come from the images, and the model's forward fails.
    assert main(run[:run.index("--input-size")] + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "a forward pass on an input of size (3, 8, 8) failed" in err and "b/stray.png (RGB)" in err


def test_swapped_height_and_width_are_named(tmp_path, capsys):
    import textwrap

    write_folder(tmp_path / "r", {"a": 3, "b": 3}, size=(12, 8))  # 8 high, 12 wide
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 2))
    """))
    run = ["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "r"), "--shots", "2",
           "--quiet", "--out", str(tmp_path / "o")]
    assert main([*run, "--input-size", "3", "12", "8"]) == 2
    assert "height and width swapped? the images are 8 high and 12 wide (--input-size C H W: 3 8 12)" in \
        capsys.readouterr().err
    assert main([*run, "--input-size", "8", "12"]) == 2  # two numbers read as a signal's C L
    assert "--input-size 8 12: images take C H W (these are 3 8 12)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_test_class_the_model_has_no_output_for_is_named(tmp_path, capsys):
    import textwrap

    write_folder(tmp_path / "six", {"a": 1, "b": 1, "zigzag": 1}, size=(8, 8))
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 2))
    """))
    import torch

    from crossdistill.models.user import build_user_model

    torch.save(build_user_model(f"{tmp_path / 'net.py'}:make").state_dict(), tmp_path / "w.pt")
    assert main(["evaluate", "--model", f"{tmp_path / 'net.py'}:make", "--weights", str(tmp_path / "w.pt"),
                 "--eval-data", str(tmp_path / "six"), "--mean", "0", "0", "0", "--std", "1", "1", "1",
                 "--quiet"]) == 2
    # Every folder holds images: which is not the model's cannot be told, so none is blamed.
    err = capsys.readouterr().err
    assert "images per class: a 1, b 1, zigzag 1; remove the 1 folder that is not the model's classes" in err
    assert "no output for" not in err


NET3 = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))
"""


def test_an_extra_folder_without_images_is_refused_by_name_not_read_as_class_0(tmp_path, capsys):
    """`Unsorted/` sorts before the classes: read as class 0 it shifted every label by one, and
    the run went on with only a coverage warning."""
    (tmp_path / "net.py").write_text(NET3)
    write_folder(tmp_path / "d", {"a": 2, "b": 2, "c": 0}, size=(8, 8))
    (tmp_path / "d" / "Unsorted").mkdir()
    out = tmp_path / "run"
    assert main(["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "d"),
                 "--shots", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "4 classes (Unsorted, a, b, c) for a model that predicts 3" in err
    assert "without images: 'Unsorted', 'c'" in err and not out.exists()
    import torch

    import crossdistill

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3)).eval()
    with pytest.raises(CrossDistillError, match="without images: 'Unsorted', 'c'"):
        crossdistill.compress(model, tmp_path / "d", shots=1, show_progress=False)
    # macOS's zip leftovers are never a class.
    (tmp_path / "d" / "Unsorted").rmdir()
    (tmp_path / "d" / "__MACOSX" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "__MACOSX" / "a" / "x.png")
    assert load_image_data(tmp_path / "d").class_names == ["a", "b", "c"]


def test_numbered_class_folders_warn_when_text_order_is_not_number_order(tmp_path):
    write_folder(tmp_path / "n", {str(i): 1 for i in range(1, 11)}, size=(4, 4))
    with pytest.warns(UserWarning, match=r"folder '10' is class 1.*names that sort as numbers \(01, 02"):
        data = load_image_data(tmp_path / "n")
    assert data.class_names[:3] == ["1", "10", "2"]  # torchvision's order, kept
    write_folder(tmp_path / "p", {f"{i:02d}": 1 for i in range(1, 11)}, size=(4, 4))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_data(tmp_path / "p")


def test_linked_and_unlistable_folders(tmp_path, monkeypatch):
    write_folder(tmp_path / "d", {"a": 1, "b": 1}, size=(4, 4))
    write_folder(tmp_path / "extra", {"more": 2}, size=(4, 4))
    (tmp_path / "d" / "a" / "more").symlink_to(tmp_path / "extra" / "more", target_is_directory=True)
    (tmp_path / "d" / "b" / "loop").symlink_to(tmp_path / "d", target_is_directory=True)  # must not recurse for ever
    assert load_image_data(tmp_path / "d").class_counts().tolist() == [3, 1]

    import os

    listing = os.scandir

    def refuse_b(path="."):
        if Path(path) == tmp_path / "d" / "b":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", refuse_b)  # root can list any folder, so the refusal is simulated
    with pytest.raises(CrossDistillError, match=r"d/b: cannot list the folder \(Permission denied\)"):
        load_image_data(tmp_path / "d")


def test_only_the_class_folders_of_the_splits_are_read(tmp_path):
    """A stray file beside the classes or in an unused val/ neither fails the read nor turns a
    gray folder RGB; a class called `train` beside others is a class."""
    write_folder(tmp_path / "g", {"a": 1, "b": 1}, size=(4, 4), mode="L")
    Image.new("RGB", (9, 9), (200, 10, 10)).save(tmp_path / "g" / "preview.jpg")
    (tmp_path / "g" / "broken.png").write_text("not an image")
    assert load_image_data(tmp_path / "g").x.shape == (2, 4, 4, 1)
    write_folder(tmp_path / "s" / "train", {"a": 1}, size=(4, 4))
    write_folder(tmp_path / "s" / "test", {"a": 1}, size=(4, 4))
    (tmp_path / "s" / "val" / "a").mkdir(parents=True)
    (tmp_path / "s" / "val" / "a" / "bad.png").write_text("not an image")
    assert load_image_data(tmp_path / "s", "test").y.tolist() == [0]
    write_folder(tmp_path / "v", {"bus": 1, "train": 1, "tram": 1}, size=(4, 4))  # a class train, images its own
    assert load_image_data(tmp_path / "v").class_names == ["bus", "train", "tram"]


def test_class_names_from_macos_match_linux_ones_in_the_order_stored(tmp_path):
    """A folder copied from macOS stores 'été' decomposed (e + accent), which sorts before
    'fleur', where the one code point of Linux's 'é' sorts after: torchvision numbers the folder as
    stored, and so must the reader, while a Linux test folder's 'été' is still the same class."""
    import unicodedata

    nfd, nfc = unicodedata.normalize("NFD", "été"), unicodedata.normalize("NFC", "été")
    assert nfd != nfc and sorted([nfd, "fleur"]) != sorted([nfc, "fleur"])
    write_folder(tmp_path / "mac", {nfd: 1, "fleur": 2}, size=(4, 4))
    write_folder(tmp_path / "linux", {nfc: 1, "fleur": 1}, size=(4, 4))
    from crossdistill.data.align import align_classes

    train, test = load_image_data(tmp_path / "mac"), load_image_data(tmp_path / "linux")
    assert train.class_names == [nfd, "fleur"] and train.y.tolist() == [0, 1, 1]  # été first, as stored
    assert test.class_names == ["fleur", nfc]  # the Linux folder's own order is the other one
    assert align_classes(test, train.class_names).y.tolist() == [1, 0]  # its été is class 0 all the same


def test_image_like_files_not_read_are_named_and_float_pixels_refused(tmp_path):
    write_folder(tmp_path / "d", {"a": 1, "b": 1}, size=(4, 4))
    (tmp_path / "d" / "a" / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    Image.new("RGB", (4, 4)).save(tmp_path / "d" / "b" / "noext", "PNG")
    (tmp_path / "d" / "b" / "README").write_text("a note, not an image")
    with pytest.warns(UserWarning, match=r"2 files that look like images were not read \('a/photo.heic', 'b/noext'\)"):
        load_image_data(tmp_path / "d")
    Image.fromarray(np.full((4, 4), 0.5, np.float32), "F").save(tmp_path / "d" / "a" / "f.tif")
    with pytest.raises(CrossDistillError, match=r"f.tif: 32-bit float pixels \(mode F\)"):
        load_image_data(tmp_path / "d")


def test_the_report_names_the_classes_and_the_files_drawn(tmp_path, capsys):
    import json

    import crossdistill
    from crossdistill.data import load_indices

    (tmp_path / "net.py").write_text(NET3)
    write_folder(tmp_path / "d", {"a": 3, "b": 3, "c": 1}, size=(8, 8))
    out = tmp_path / "run"
    assert main(["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "d"),
                 "--shots", "1", "--method", "quant", "--bits", "8", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    data = load_image_data(tmp_path / "d")
    drawn = [data.files[i] for i in report["fewshot_indices"]]
    assert report["class_names"] == ["a", "b", "c"] and report["fewshot_files"] == drawn
    assert [f.split("/")[0] for f in drawn] == ["a", "b", "c"] and drawn[2] == "c/img0.png"
    indices, meta = load_indices(out / "fewshot_indices.json")
    assert indices.tolist() == report["fewshot_indices"] and meta["files"] == drawn and meta["seed"] == 0
    with pytest.raises(CrossDistillError, match=r"more than class 2 \(c\) has \(1 sample\)"):
        crossdistill.compress(_net3(), tmp_path / "d", shots=2,
                              show_progress=False)
    _, api_report = crossdistill.compress(_net3(), tmp_path / "d", shots=1, method="quant", bits=8,
                                          show_progress=False)
    assert api_report["fewshot_files"] == drawn and api_report["class_names"] == ["a", "b", "c"]


def _net3():
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def test_pixels_that_would_not_fit_in_memory_are_refused_before_decoding_them_all(tmp_path, monkeypatch):
    from crossdistill.data import folder_pixels

    write_folder(tmp_path / "big", {"a": 3, "b": 3}, size=(40, 30))
    opened = []
    real_open = folder_pixels.open_image
    monkeypatch.setattr(folder_pixels, "open_image", lambda f, gray: opened.append(f) or real_open(f, gray))
    monkeypatch.setattr(folder_pixels, "available_bytes", lambda: 6 * 40 * 30 * 3)  # all of it just does not fit
    with pytest.raises(CrossDistillError, match=r"the pixels of 6 images of 40x30 take 0.0 MiB, more than .*crossdistill "
                                                r"pack .*big --size HxW"):
        read_image_folder(tmp_path / "big")
    assert len(opened) == 1
    assert read_image_folder(tmp_path / "big", size=8).x.shape == (6, 8, 8, 3)  # 6 x 8 x 8 x 3 fits
    monkeypatch.setattr(folder_pixels, "available_bytes", lambda: None)  # no /proc: nothing to check against
    assert read_image_folder(tmp_path / "big").x.shape == (6, 30, 40, 3)


def _numbered_folder_and_row_net(tmp_path: Path) -> list[str]:
    """Folders 1 ... 10 under tmp_path/n (class i: a bright row i in channel i % 3) and a model
    file tmp_path/net.py whose output i reads that row: right on every image in the order 1 ... 10."""
    names = [str(i) for i in range(1, 11)]
    rng = np.random.default_rng(0)
    for label, name in enumerate(names):  # class i: a bright patch in channel i % 3, row i
        (tmp_path / "n" / name).mkdir(parents=True)
        for k in range(3):
            pixels = rng.integers(0, 40, (10, 10, 3), dtype=np.uint8)
            pixels[label, :, label % 3] = 255
            Image.fromarray(pixels).save(tmp_path / "n" / name / f"{k}.png")
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class RowNet(nn.Module):  # class i: the mean of row i of channel i % 3, scaled\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 3, 1)\n"
        "    def forward(self, x):\n"
        "        h = self.conv(x)\n"
        "        return torch.stack([h[:, i % 3, i].mean(1) for i in range(10)], 1) * 10\n\n"
        "def make():\n"
        "    net = RowNet()\n"
        "    with torch.no_grad():\n"
        "        net.conv.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1)); net.conv.bias.zero_()\n"
        "    return net\n")
    return names


def test_classes_give_the_models_order_to_a_folder_sorted_otherwise(tmp_path, capsys):
    """Folders 1 ... 10 sort as 1, 10, 2, ...; a model trained with label i for folder i + 1 is
    scored against the wrong classes unless its order can be given."""
    import json

    import torch

    import crossdistill

    names = _numbered_folder_and_row_net(tmp_path)
    (tmp_path / "order.txt").write_text("\n".join(names) + "\n")
    common = ["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "n"), "--eval-data",
              str(tmp_path / "n"), "--shots", "2", "--method", "quant", "--bits", "8", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "as_sorted")]) == 0
    err = capsys.readouterr().err
    assert "folder '10' is class 1" in err and "no better than guessing" in err
    assert main(common + ["--classes", str(tmp_path / "order.txt"), "--out", str(tmp_path / "ordered")]) == 0
    err = capsys.readouterr().err
    assert "folder '10' is class 1" not in err and "guessing" not in err
    report = json.loads((tmp_path / "ordered" / "report.json").read_text())
    assert report["teacher"]["top1"] == 100.0 and report["class_names"] == names
    import yaml

    assert yaml.safe_load((tmp_path / "ordered" / "config.yaml").read_text())["classes"] == names  # the names kept
    from crossdistill.models.user import build_user_model

    model = build_user_model(f"{tmp_path / 'net.py'}:make").eval()
    _, api = crossdistill.compress(model, tmp_path / "n", shots=2, classes=names, method="quant", bits=8,
                                   eval_data=tmp_path / "n", show_progress=False)
    assert api["teacher"]["top1"] == 100.0
    torch.save(model.state_dict(), tmp_path / "w.pt")
    evaluate = ["evaluate", "--model", f"{tmp_path / 'net.py'}:make", "--weights", str(tmp_path / "w.pt"),
                "--eval-data", str(tmp_path / "n"), "--no-latency", "--json", "--quiet"]
    capsys.readouterr()
    assert main(evaluate) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["top1"] == 10.0 and "the model scores 10.0 % top-1" in captured.err
    assert main(evaluate + ["--classes", str(tmp_path / "order.txt")]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == 100.0
    with pytest.raises(CrossDistillError, match=r"classes \['9'\] are not in the class list \(9 names"):
        crossdistill.compress(model, tmp_path / "n", shots=2, classes=names[:-2] + ["10"], show_progress=False)
    with pytest.raises(CrossDistillError, match="classes are given by name, but the data names none"):
        crossdistill.compress(model, torch.rand(20, 3, 10, 10), labels=torch.arange(20) % 10, shots=2,
                              classes=names, show_progress=False)


def test_a_folder_beside_train_and_test_is_named_not_read_as_a_class(tmp_path):
    """`photos/{train,test,Unsorted}` was read as three classes Unsorted, test and train."""
    write_folder(tmp_path / "p" / "train", {"cat": 1, "dog": 1}, size=(4, 4))
    write_folder(tmp_path / "p" / "test", {"cat": 1, "dog": 1}, size=(4, 4), seed=1)
    write_folder(tmp_path / "p" / "Unsorted", {"misc": 2}, size=(4, 4), seed=2)
    (tmp_path / "p" / "notes").mkdir()
    with pytest.warns(UserWarning, match=r"Unsorted/ beside train/ and test/ is not read"):
        data = load_image_data(tmp_path / "p")
    assert data.class_names == ["cat", "dog"] and data.y.tolist() == [0, 1]
    write_folder(tmp_path / "q" / "train", {"cat": 1, "dog": 1}, size=(4, 4))  # train/ alone, loose images beside
    write_folder(tmp_path / "q", {"Unsorted": 2}, size=(4, 4), seed=3)
    with pytest.warns(UserWarning, match=r"Unsorted/ beside train/ and test/ is not read"):
        assert load_image_data(tmp_path / "q").class_names == ["cat", "dog"]


def test_links_that_would_give_an_image_two_classes_or_walk_the_disk(tmp_path):
    write_folder(tmp_path / "d", {"a": 1, "b": 1}, size=(4, 4))
    (tmp_path / "d" / "a" / "root").symlink_to("/", target_is_directory=True)  # cut: an ancestor of every folder
    assert load_image_data(tmp_path / "d").class_counts().tolist() == [1, 1]
    (tmp_path / "d" / "a" / "root").unlink()
    # A loop inside one class: each real folder walked once.
    (tmp_path / "d" / "a" / "p").mkdir()
    (tmp_path / "d" / "a" / "q").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "d" / "a" / "q" / "x.png")
    (tmp_path / "d" / "a" / "p" / "to_q").symlink_to(tmp_path / "d" / "a" / "q", target_is_directory=True)
    (tmp_path / "d" / "a" / "q" / "to_p").symlink_to(tmp_path / "d" / "a" / "p", target_is_directory=True)
    assert load_image_data(tmp_path / "d").class_counts().tolist() == [2, 1]
    # Files stored once and linked from two classes (git-annex, DVC): read, one image each.
    (tmp_path / "store").mkdir()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "store" / "blob.png")
    (tmp_path / "d" / "a" / "same.png").symlink_to(tmp_path / "store" / "blob.png")
    (tmp_path / "d" / "b" / "same.png").symlink_to(tmp_path / "store" / "blob.png")
    assert load_image_data(tmp_path / "d").class_counts().tolist() == [3, 2]
    (tmp_path / "d" / "b" / "to_a").symlink_to(tmp_path / "d" / "a", target_is_directory=True)  # a class in a class
    with pytest.raises(CrossDistillError, match=r"b/to_a: also a folder of class 'a' \(through a link\)"):
        load_image_data(tmp_path / "d")


def test_two_sizes_stop_the_decoding_and_unicode_digits_are_names(tmp_path, monkeypatch):
    from crossdistill.data import folder_pixels

    write_folder(tmp_path / "m", {"a": 1}, size=(6, 4))
    write_folder(tmp_path / "m", {"b": 5}, size=(4, 6), seed=1)
    opened = []
    real_open = folder_pixels.open_image
    monkeypatch.setattr(folder_pixels, "open_image", lambda f, gray: opened.append(f) or real_open(f, gray))
    with pytest.raises(CrossDistillError, match=r"differ in size \(width x height: a/img0.png 6x4; b/img0.png 4x6\)"):
        load_image_data(tmp_path / "m")
    assert len(opened) == 2  # not every photo of a folder of portraits and landscapes
    write_folder(tmp_path / "u", {"²": 1, "1": 1}, size=(4, 4))  # str.isdigit, but no int
    assert load_image_data(tmp_path / "u").class_names == ["1", "²"]


def test_a_sliced_folder_keeps_its_files(tmp_path):
    write_folder(tmp_path / "d", {"a": 2, "b": 2}, size=(4, 4))
    part = load_image_data(f"{tmp_path / 'd'}[1:3]")
    assert part.files == ["a/img1.png", "b/img0.png"] and part.y.tolist() == [0, 1]


def test_a_whole_set_that_would_not_fit_as_float32_is_refused(monkeypatch):
    from crossdistill.data import folder_pixels
    from crossdistill.data.transforms import to_tensor

    x = np.zeros((350, 256, 256, 3), np.uint8)  # 275 MB as float32, past the size that is checked
    monkeypatch.setattr(folder_pixels, "available_bytes", lambda: 2**28)
    with pytest.raises(CrossDistillError, match=r"350 images of 256x256 as float32 take 262.5 MiB, more than the "
                                                r"256.0 MiB of memory free: give fewer images"):
        to_tensor(x, (0.5,), (0.25,))
    monkeypatch.setattr(folder_pixels, "available_bytes", lambda: 2**32)
    t = to_tensor(x[:2], (0.5,), (0.25,))
    assert t.shape == (2, 3, 256, 256) and t.is_contiguous() and float(t[0, 0, 0, 0]) == -2.0


def test_classes_reach_the_sweeps_teacher_score_and_evaluate_keeps_a_students_order(tmp_path, capsys):
    """A sweep scored its teacher on the test folder as sorted, whatever `classes` said (the
    database kept 10 % beside a student at 100 %); evaluate let --classes override the order a
    saved student records."""
    import json
    import warnings

    import yaml

    from crossdistill.data.readers_folder import ClassOrderWarning
    from crossdistill.reporting.results import load_runs

    names = _numbered_folder_and_row_net(tmp_path)
    (tmp_path / "order.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "ordered", "base": {"model": f"{tmp_path / 'net.py'}:make", "data": str(tmp_path / "n"),
                                    "eval_data": str(tmp_path / "n"), "classes": str(tmp_path / "order.txt"),
                                    "method": "quant", "bits": 8, "shots": 2}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassOrderWarning)  # the order is given: nothing to say about the names'
        assert main(["sweep", str(tmp_path / "sweep.yaml"), "--db", str(tmp_path / "s.sqlite")]) == 0
    (row,) = load_runs(tmp_path / "s.sqlite")
    assert row.teacher_top1 == 100.0 and row.student_top1 == 100.0
    assert main(["compress", "--model", f"{tmp_path / 'net.py'}:make", "--data", str(tmp_path / "n"), "--classes",
                 str(tmp_path / "order.txt"), "--shots", "2", "--method", "quant", "--bits", "8", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    evaluate = ["evaluate", "--weights", str(tmp_path / "run"), "--eval-data", str(tmp_path / "n"), "--no-latency",
                "--json", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassOrderWarning)  # the file records the order
        assert main(evaluate) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == 100.0
    assert main(evaluate + ["--classes", *reversed(names)]) == 2
    assert "--classes differs from the classes" in capsys.readouterr().err
    assert main(evaluate + ["--classes", str(tmp_path / "order.txt")]) == 0  # the same order: fine


def test_a_class_list_of_another_length_is_named_as_the_list():
    from crossdistill.data.align import check_named_classes, class_list
    from crossdistill.config import CompressConfig

    with pytest.raises(CrossDistillError, match=r"the class list \(--classes, classes=\) names 3 classes for a model "
                                                r"that predicts 2"):
        check_named_classes(["a", "b", "c"], 2, "folder", np.array([0, 1]), listed=True)
    # Names may hold spaces: split at commas only; a file's path is kept whole.
    assert CompressConfig(classes="chat noir, chien").classes == ["chat noir", "chien"]
    assert class_list("chat noir,chien") == ["chat noir", "chien"]
    import unicodedata

    with pytest.raises(CrossDistillError, match="given twice"):
        class_list([unicodedata.normalize("NFD", "été"), unicodedata.normalize("NFC", "été")])


def test_a_class_list_file_whose_path_holds_a_space_is_read_as_a_file(tmp_path):
    from crossdistill.config import CompressConfig
    from crossdistill.data.align import class_list

    path = tmp_path / "my classes.txt"
    path.write_text("b\na\n")
    cfg = CompressConfig(classes=str(path))
    assert cfg.classes == ["b", "a"] == class_list([str(path)])  # the names: they identify the run, not the path


def test_a_class_list_is_its_names_in_sweeps_reports_and_packs(tmp_path, capsys):
    """A sweep hashed `classes: FILE` by the path (an edited list counted as done); a report put
    runs with and without a class list under one teacher score; pack could not take the order."""
    import pathlib

    from crossdistill.config import CompressConfig
    from crossdistill.data.align import align_classes
    from crossdistill.sweep.hashing import config_hash

    (tmp_path / "c.txt").write_text("b\na\n")
    first = config_hash(CompressConfig(classes=str(tmp_path / "c.txt")))
    assert CompressConfig(classes=pathlib.Path(tmp_path / "c.txt")).classes == ["b", "a"]
    (tmp_path / "c.txt").write_text("a\nb\n")
    assert config_hash(CompressConfig(classes=str(tmp_path / "c.txt"))) != first
    assert config_hash(CompressConfig(classes=["b", "a"])) == first
    # A config read back from a database keeps what it stored; one made here reads or refuses.
    assert CompressConfig.from_dict({"classes": ["old.txt"]}, strict=False).classes == ["old.txt"]
    with pytest.raises(CrossDistillError, match=r"classes: 'old.txt' is one name and no file from here"):
        CompressConfig(classes="old.txt")
    many = ",".join(f"class number {i}" for i in range(100))  # longer than a file name may be
    assert len(CompressConfig(classes=many).classes) == 100
    write_folder(tmp_path / "d", {"a": 1, "b": 2}, size=(4, 4))
    assert main(["pack", str(tmp_path / "d"), "--classes", "b", "a", "--out", str(tmp_path / "d.npz")]) == 0
    packed = load_image_data(tmp_path / "d.npz")
    assert packed.class_names == ["b", "a"] and packed.y.tolist() == [1, 0, 0]
    np.savez(tmp_path / "cifar_part.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, 9]))
    with pytest.raises(CrossDistillError, match=r"that the model's file \(s.safetensors\) does not have .*read with "
                                                r"CIFAR-10's names"):
        align_classes(load_image_data(tmp_path / "cifar_part.npz"), [str(i) for i in range(10)],
                      known_as="the model's file (s.safetensors)")
