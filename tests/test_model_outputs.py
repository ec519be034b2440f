"""Models that are not (batch, classes) classifiers: several outputs (tuple, dict), predictions per
position (segmentation), plain values (a depth map, a regression): compressed, scored, fine-tuned,
saved and exported."""
from __future__ import annotations

import collections
import dataclasses
import warnings

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.errors import CrossDistillError
from crossdistill.evaluation_agreement import agreement, top1
from crossdistill.finetune.losses import Distillation, kd_loss
from crossdistill.model_outputs import flat, kind_of, label_shape, position, predictions


class Trunk(nn.Module):
    def __init__(self, out: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, out, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DictOut(nn.Module):
    """A Hugging Face-like output: logits beside an auxiliary head and the pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.fc, self.aux = Trunk(), nn.Linear(32, 10), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x).mean((2, 3))
        return {"aux": self.aux(h), "logits": self.fc(h), "features": h}


class TupleOut(DictOut):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x).mean((2, 3))
        return self.aux(h), self.fc(h)


class Segmenter(nn.Module):
    """Logits per pixel (N×C×H×W), with an upsampled deeper path concatenated to a shallow one."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                               nn.Upsample(scale_factor=2))
        self.c = nn.Sequential(nn.Conv2d(48, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        return self.head(self.c(torch.cat([a, self.b(a)], 1)))


class Depth(Segmenter):
    """One value per pixel (a depth map): predictions of kind 'values'."""

    def __init__(self) -> None:
        super().__init__(classes=1)


def _warm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    # Running statistics that are not the identity, so BatchNorm matters in every check.
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)  # every model's initial weights


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(48, 3, 12, 12, generator=torch.Generator().manual_seed(0))


# -- which output holds the predictions --------------------------------------------------------------

def test_predictions_are_picked_by_key_index_or_default():
    a, b, c = torch.zeros(2, 3), torch.ones(2, 4), torch.full((2, 5), 2.0)
    assert predictions(a) is a
    assert predictions((a, b)) is a and predictions((a, b), "1") is b and predictions([a, b], "-1") is b
    assert predictions({"aux": a, "logits": b}) is b  # 'logits' wins over the first entry
    assert predictions({"out": c, "aux": a}) is c and predictions({"out": c, "aux": a}, "aux") is a
    nested = {"head": (c, a), "logits": b}
    assert predictions(nested, "head") is c and position(nested, "head") == 0 and position(nested) == 2
    assert flat(nested) == [c, a, b]
    with pytest.raises(CrossDistillError, match=r"output_key 'x': the model returns a dict \{'out': \(2, 5\)"):
        predictions({"out": c}, "x")
    with pytest.raises(CrossDistillError, match=r"give an index 0 \.\.\. 1"):
        predictions((a, b), "2")
    with pytest.raises(CrossDistillError, match="returns one tensor; leave output_key unset"):
        predictions(a, "logits")


def test_kinds_and_label_shapes_follow_the_predictions_shape():
    assert kind_of(torch.zeros(4, 10)) == "classes" and label_shape(torch.zeros(4, 10), "classes") == ()
    assert kind_of(torch.zeros(4)) == kind_of(torch.zeros(4, 1)) == "binary"
    assert kind_of(torch.zeros(4, 5, 8, 8)) == "dense" and label_shape(torch.zeros(4, 5, 8, 8), "dense") == (8, 8)
    assert kind_of(torch.zeros(4, 1, 8, 8)) == "values" and label_shape(torch.zeros(4, 1, 8, 8), "values") is None


# -- scores ------------------------------------------------------------------------------------------

def test_dense_top1_counts_positions_and_binary_reads_the_sign(images):
    seg = _warm(Segmenter(), images)
    with torch.no_grad():
        pred = seg(images).argmax(1)
    labels = pred.clone()
    labels[:, :6] = (labels[:, :6] + 1) % 5  # half the rows of every map wrong
    assert top1(seg, images, labels, kind="dense") == pytest.approx(50.0)

    class Binary(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0, 0, 0] - 0.5  # (batch,): one logit

    x = torch.rand(40, 3, 2, 2)
    y = (x[:, 0, 0, 0] > 0.5).long()
    assert top1(Binary(), x, y, kind="binary") == 100.0
    assert top1(Binary(), x, 1 - y, kind="binary") == 0.0


def test_agreement_is_exact_for_a_copy_and_low_for_another_model(images):
    seg = _warm(Segmenter(), images)
    same = agreement(seg, seg, images.split(16), kind="dense")
    assert same == {"output_error": 0.0, "top1_agreement": 100.0}
    other = agreement(seg, _warm(Segmenter(), images * 2), images.split(16), kind="dense")
    assert other["output_error"] > 0.3 and other["top1_agreement"] < 60.0
    # Every output counts: a model whose logits agree but whose auxiliary head differs is not a copy.
    dict_model = _warm(DictOut(), images)
    changed = DictOut()
    changed.load_state_dict(dict_model.state_dict())
    with torch.no_grad():
        changed.aux.weight.mul_(2.0)
    res = agreement(dict_model, changed.eval(), [images])
    assert res["top1_agreement"] == 100.0 and res["output_error"] > 1e-4  # a copy gives 0.0 exactly


# -- the fine-tune's loss ------------------------------------------------------------------------------

def test_dense_kd_is_the_mean_of_the_per_position_kd():
    s, t = torch.randn(3, 5, 4, 4), torch.randn(3, 5, 4, 4)
    per_pixel = s.permute(0, 2, 3, 1).reshape(-1, 5), t.permute(0, 2, 3, 1).reshape(-1, 5)
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(float(kd_loss(*per_pixel, 2.0)), rel=1e-5)


def test_distillation_weighs_every_output_and_reads_binary_logits_as_two_classes(images):
    teacher = _warm(DictOut(), images)
    d = Distillation.of(teacher, images[:2], None, 4.0)
    assert d.position == 1 and d.kind == "classes"  # 'logits' is the second entry
    with torch.no_grad():
        t = flat(teacher(images))
    assert float(d.kd(t, t)) == 0.0
    moved_aux = [t[0] + 1.0, t[1], t[2]]
    assert float(d.kd(moved_aux, t)) > 0.0  # the auxiliary output is distilled too
    b = Distillation(0, "binary", 1.0)
    z_s, z_t = torch.randn(6), torch.randn(6)
    p_t = torch.sigmoid(z_t)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z_s, p_t) - \
        torch.nn.functional.binary_cross_entropy_with_logits(z_t, p_t)  # KL = cross-entropy − entropy
    assert float(b.kd([z_s], [z_t])) == pytest.approx(float(bce), rel=1e-5)


# -- end to end through the API --------------------------------------------------------------------

def test_a_dict_model_compresses_scores_its_logits_and_distils_every_output(images):
    teacher = _warm(DictOut(), images)
    labels = torch.arange(48) % 10
    test = torch.randn(30, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        test_labels = teacher(test)["logits"].argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student, report = crossdistill.compress(teacher, images, labels=labels, shots=3, keep=0.5,
                                                eval_data=(test, test_labels), finetune_epochs=20,
                                                finetune_mode="kd", finetune_augment=False, finetune_lr=1e-3,
                                                show_progress=False)
    assert report["predictions"] == {"output": None, "kind": "classes"}
    assert report["teacher"]["top1"] == 100.0  # labels are the teacher's own predictions
    assert set(student(test)) == {"aux", "logits", "features"}
    assert student.trunk.body[0].out_channels < 16  # pruned, the aux head's input re-solved with the rest
    assert report["agreement"]["n_eval"] == 30 and 0 < report["agreement"]["output_error"] < 1.0
    assert report["finetune"]["after"]["kd"] < report["finetune"]["before"]["kd"]
    # The auxiliary output chosen as the predictions: scored on it (4 classes), its labels checked.
    with pytest.raises(CrossDistillError, match="eval_data label 9 is not a class of the model, which has 4"):
        crossdistill.compress(teacher, images, labels=labels % 4, shots=3, keep=0.5, output_key="aux",
                              eval_data=(test, torch.full((30,), 9)), show_progress=False)


def test_a_tuple_model_takes_its_predictions_by_index(images):
    teacher = _warm(TupleOut(), images)
    test = torch.randn(20, 3, 12, 12)
    with torch.no_grad():
        y = teacher(test)[1].argmax(1)
    _, first = crossdistill.compress(teacher, images, n_samples=24, method="sparsity", sparsity=0.5,
                                     eval_data=(test, y % 4), show_progress=False)
    _, second = crossdistill.compress(teacher, images, n_samples=24, method="sparsity", sparsity=0.5, output_key="1",
                                      eval_data=(test, y), show_progress=False)
    assert second["teacher"]["top1"] == 100.0 and first["predictions"]["output"] is None
    assert second["config"]["output_key"] == "1"


def test_a_segmenter_is_pruned_and_scored_per_pixel_with_or_without_labels(images):
    teacher = _warm(Segmenter(), images)
    test = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        maps = teacher(test).argmax(1)
    student, report = crossdistill.compress(teacher, images, n_samples=32, keep=0.5, eval_data=(test, maps),
                                            finetune_epochs=1, show_progress=False)
    assert report["predictions"]["kind"] == "dense" and report["teacher"]["top1"] == 100.0
    assert report["student"]["top1"] == pytest.approx(report["agreement"]["top1_agreement"])
    assert report["student"]["params"] < report["teacher"]["params"]
    assert student(test).shape == (16, 5, 12, 12)
    _, unlabelled = crossdistill.compress(teacher, images, n_samples=32, keep=0.5, eval_data=test,
                                          show_progress=False)
    assert "top1" not in unlabelled["student"]
    assert unlabelled["agreement"]["output_error"] == pytest.approx(report["agreement"]["output_error"], rel=0.2)
    with pytest.raises(CrossDistillError, match=r"labels have shape \(\) per sample; the model's dense predictions "
                                                r"take \(12, 12\)"):
        crossdistill.compress(teacher, images, n_samples=32, eval_data=(test, maps[:, 0, 0]), show_progress=False)
    with pytest.raises(CrossDistillError, match="the few-shot draw takes one label per sample"):
        crossdistill.compress(teacher, images[:16], labels=maps, n_samples=8, show_progress=False)


def test_a_value_model_is_compared_with_its_teacher_only(images):
    teacher = _warm(Depth(), images)
    test = torch.randn(8, 3, 12, 12)
    student, report = crossdistill.compress(teacher, images, n_samples=32, method="sparsity", sparsity=0.6,
                                            eval_data=test, finetune_epochs=1, show_progress=False)
    assert report["predictions"]["kind"] == "values" and report["agreement"]["top1_agreement"] is None
    assert 0 < report["agreement"]["output_error"] < 0.5
    with pytest.raises(CrossDistillError, match="eval_data has labels, but the model's predictions are values"):
        crossdistill.compress(teacher, images, n_samples=32, eval_data=(test, torch.zeros(8)), show_progress=False)


def test_outputs_and_kind_survive_save_and_load(images, tmp_path):
    for model, output, kind in [(DictOut(), "aux", "classes"), (Depth(), None, "values"),
                                (Segmenter(), None, "dense")]:
        teacher = _warm(model, images)
        student, _ = crossdistill.compress(teacher, images, n_samples=24, method="sparsity", sparsity=0.5,
                                           output_key=output, show_progress=False)
        student.crossdistill_factory = f"{__file__}:{type(model).__name__}"
        path = crossdistill.save(student, tmp_path / f"{type(model).__name__}.safetensors")
        loaded = crossdistill.load(path)
        from crossdistill.models.user import info_of

        info = info_of(loaded)
        assert (info.output, info.kind) == (output, kind)
        assert info.num_classes == {"classes": 4, "values": 0, "dense": 5}[kind]
        for a, b in zip(flat(student(images[:4])), flat(loaded(images[:4]))):
            assert torch.equal(a, b)


def test_export_names_and_verifies_every_output(images, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from crossdistill.export import export_model

    model = _warm(DictOut(), images)
    res = export_model(model, tmp_path / "d.onnx", "onnx", images[:8])
    assert [o.name for o in onnx.load(str(res.path)).graph.output] == ["aux", "logits", "features"]
    assert res.max_abs_diff <= 1e-4
    res = export_model(model, tmp_path / "d.pt", "torchscript", images[:8])
    assert res.max_abs_diff <= 1e-5


# -- the command line ----------------------------------------------------------------------------

CLI_MODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, dense=False):
        super().__init__()
        self.dense = dense
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)
        self.seg = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        h = self.body(x)
        if self.dense:
            return self.seg(h)
        return {"embedding": h.mean((2, 3)), "logits": self.fc(h.mean((2, 3)))}


def classifier():
    torch.manual_seed(0)
    return Net()


def segmenter():
    torch.manual_seed(0)
    return Net(dense=True)
'''


def test_cli_compresses_a_dict_model_and_evaluates_its_saved_student(tmp_path, capsys):
    import json

    from crossdistill.cli.main import main
    from sweep_helpers import write_npz_pair

    from crossdistill.models.user import build_user_model

    (tmp_path / "nets.py").write_text(CLI_MODELS)
    spec = f"{tmp_path}/nets.py:classifier"
    weights = tmp_path / "teacher.pt"
    torch.save(build_user_model(spec).state_dict(), weights)
    train, test = write_npz_pair(tmp_path / "data", n_train=100, n_test=40)
    out = tmp_path / "run"
    assert main(["compress", "--model", spec, "--weights", str(weights), "--data", str(train), "--eval-data",
                 str(test), "--shots", "3", "--quiet", "--sparsity", "0.5", "--method", "sparsity", "--out",
                 str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["output_key"] is None and report["student"]["n_eval"] == 40
    # The student against its teacher on the same test images: a share of them, and the error.
    agree = report["agreement"]
    assert agree["n_eval"] == 40 and 0 <= agree["top1_agreement"] <= 100 and agree["output_error"] > 0
    assert f"{agree['top1_agreement']:.2f}   % of test images with the teacher's class" in \
        (out / "summary.txt").read_text()
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(out), "--eval-data", str(test), "--no-latency", "--json",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(report["student"]["top1"])
    # The teacher from its state dict: its logits score as compress reported; a wrong --output is named.
    own = ["evaluate", "--model", spec, "--weights", str(weights), "--eval-data", str(test), "--no-latency", "--quiet"]
    assert main([*own, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(report["teacher"]["top1"])
    assert main([*own, "--output-key", "nope"]) == 2
    assert "output_key 'nope': the model returns a dict {'embedding': (2, 16), 'logits': (2, 10)}" in capsys.readouterr().err


def test_cli_compresses_a_segmenter_but_will_not_score_it_against_image_labels(tmp_path, capsys):
    import json

    from crossdistill.cli.main import main
    from sweep_helpers import write_npz_pair

    (tmp_path / "nets.py").write_text(CLI_MODELS)
    train, test = write_npz_pair(tmp_path / "data", n_train=100, n_test=40)
    spec = f"{tmp_path}/nets.py:segmenter"
    assert main(["compress", "--model", spec, "--data", str(train), "--eval-data", str(test), "--n-samples", "20",
                 "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert "predictions are dense (not one class per image)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["compress", "--model", spec, "--data", str(train), "--n-samples", "20", "--keep", "0.5",
                 "--quiet", "--out", str(tmp_path / "ok")]) == 0
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["n_samples"] == 20 and report["channel_groups"]["pruned"]
    assert report["predictions"] == {"output": None, "kind": "dense"}


def test_mean_iou_is_intersection_over_union_averaged_over_present_classes():
    from crossdistill.evaluation_agreement import scores

    class Fixed(nn.Module):
        """Predicts class 0 on the left half, 1 on the right half of a 1×4 map."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 3, 1, 4)
            logits[:, 0, :, :2] = 1.0
            logits[:, 1, :, 2:] = 1.0
            return logits

    y = torch.tensor([[[0, 1, 1, 1]]])  # class 0: I 1 / U 2; class 1: I 2 / U 3; class 2 absent
    res = scores(Fixed(), torch.zeros(1, 1), y, kind="dense")
    assert res["top1"] == pytest.approx(75.0)
    assert res["miou"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


# -- shapes that are easy to misread -------------------------------------------------------------------

class SqueezedBinary(nn.Module):
    """One logit per image, squeezed: a batch of one gives a 0-d tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.fc = Trunk(), nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x).mean((2, 3))).squeeze()


class WithScalarLoss(DictOut):
    """Logits beside a scalar auxiliary (balance) loss, as mixture-of-experts models return."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x).mean((2, 3))
        return {"logits": self.fc(h), "aux_loss": h.pow(2).mean()}


def test_a_squeezed_binary_model_is_read_as_binary_whatever_the_batch_sizes():
    x = torch.randn(65, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    teacher = _warm(SqueezedBinary(), x)
    with torch.no_grad():
        y = (teacher(x) > 0).long()
    # 65 samples with batches of 64 (fine-tune) and 257 test samples with batches of 256 (scores):
    # no batch of one, whose squeezed logit would have no batch dimension.
    test = torch.cat([x] * 4)[:257]
    _, report = crossdistill.compress(teacher, x, labels=y.bool(), n_samples=65, method="quant", bits=4,
                                      finetune_epochs=1,
                                      finetune_mode="kd", finetune_kd_weight=0.5,
                                      eval_data=(test, torch.cat([y] * 4)[:257]), show_progress=False)
    assert report["predictions"]["kind"] == "binary" and report["teacher"]["top1"] == 100.0
    assert "ce" in report["finetune"]["before"]  # the labels were used: cross-entropy on the binary logit
    assert report["agreement"]["n_eval"] == 257


def test_a_scalar_output_is_left_out_of_the_distillation_and_the_agreement(images):
    teacher = _warm(WithScalarLoss(), images)
    _, report = crossdistill.compress(teacher, images, n_samples=40, keep=0.5, finetune_epochs=1,
                                      finetune_mode="kd", eval_data=images[:17], show_progress=False)
    assert report["finetune"]["steps"] == 1 and report["agreement"]["top1_agreement"] is not None


def test_the_kind_can_be_named_where_the_shape_misleads(images):
    class DepthSqueezed(Depth):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[:, 0]  # (batch, H, W): would read as 12 classes per row

    teacher = _warm(DepthSqueezed(), images)
    _, auto = crossdistill.compress(teacher, images, n_samples=24, method="quant", bits=4, show_progress=False)
    assert auto["predictions"]["kind"] == "dense"
    _, named = crossdistill.compress(teacher, images, n_samples=24, method="quant", bits=4, output_kind="values",
                                     finetune_epochs=1, eval_data=images[:8], show_progress=False)
    assert named["predictions"]["kind"] == "values" and named["agreement"]["top1_agreement"] is None
    with pytest.raises(CrossDistillError, match=r"predictions of shape \(2, 12, 12\) .*cannot be read as classes"):
        crossdistill.compress(teacher, images, n_samples=24, output_kind="classes", show_progress=False)
    with pytest.raises(CrossDistillError, match="cross-entropy term scores classes, and this model's predictions are "
                                                "values"):
        crossdistill.compress(teacher, images, labels=torch.arange(48) % 3, shots=4, output_kind="values",
                              method="quant", bits=4, finetune_epochs=1, finetune_mode="kd",
                              finetune_kd_weight=0.5, show_progress=False)
    with pytest.raises(CrossDistillError, match="output_key and output_kind are for models of your own"):
        from crossdistill.models import create_model

        crossdistill.compress(create_model("resnet20").eval(), torch.randn(8, 3, 32, 32), n_samples=4,
                              output_key="0", show_progress=False)


def test_named_tuples_are_read_by_field_name_and_index():
    from collections import namedtuple

    Out = namedtuple("Out", ["features", "logits"])
    f, lg = torch.zeros(2, 8), torch.ones(2, 3)
    out = Out(f, lg)
    assert predictions(out) is lg and predictions(out, "features") is f and predictions(out, "0") is f
    with pytest.raises(CrossDistillError, match=r"a named tuple Out\(features: \(2, 8\), logits: \(2, 3\)\)"):
        predictions(out, "nope")

    class NamedOut(DictOut):
        def forward(self, x: torch.Tensor):
            h = self.trunk(x).mean((2, 3))
            return Out(h, self.fc(h))

    x = torch.randn(24, 3, 12, 12)
    _, report = crossdistill.compress(_warm(NamedOut(), x), x, n_samples=12, method="quant", bits=4, output_key=1,
                                      show_progress=False)  # an int index is taken as on the command line
    assert report["config"]["output_key"] == "1" and report["predictions"]["kind"] == "classes"


def test_a_segmenter_exports_with_free_sizes_and_a_mixed_dict_exports_to_torchscript(images, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from crossdistill.export import export_model

    seg = _warm(Segmenter(), images)
    res = export_model(seg, tmp_path / "seg.onnx", "onnx", images[:8])
    assert res.free_axes == ("height", "width")
    big = torch.randn(3, 3, 20, 16)
    got = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"]).run(None, {"input": big.numpy()})[0]
    with torch.no_grad():
        assert got.shape == (3, 5, 20, 16) and float((torch.from_numpy(got) - seg(big)).abs().max()) < 1e-4

    class HiddenStates(DictOut):
        """A Hugging Face-like output: logits beside a tuple of hidden states."""

        def forward(self, x: torch.Tensor) -> dict:
            feats = self.trunk(x)
            return {"logits": self.fc(feats.mean((2, 3))), "hidden_states": (feats, feats.mean(1))}

    hf = _warm(HiddenStates(), images)
    res = export_model(hf, tmp_path / "hf.pt", "torchscript", images[:8])
    assert res.note == "outputs flattened to a tuple in this order: logits, hidden_states.0, hidden_states.1"
    loaded = torch.jit.load(str(res.path))
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(loaded(images[:4]), flat(hf(images[:4]))))


def test_void_positions_labelled_255_are_not_scored(images):
    from crossdistill.evaluation_agreement import scores

    seg = _warm(Segmenter(), images)
    with torch.no_grad():
        maps = seg(images).argmax(1)
    wrong = (maps + 1) % 5
    wrong[:, :, :6] = 255  # the wrong half is void
    mixed = torch.where(torch.arange(12) < 6, wrong, maps)
    res = scores(seg, images, mixed, kind="dense")
    assert res["top1"] == 100.0 and res["miou"] == 100.0
    _, report = crossdistill.compress(seg, images, n_samples=24, method="quant", bits=8, eval_data=(images, mixed),
                                      show_progress=False)
    assert report["teacher"]["top1"] == 100.0
    with pytest.raises(CrossDistillError, match=r"label 254 is not a class of the model, which has 5 outputs \(255 or a negative label marks"):
        crossdistill.compress(seg, images, n_samples=24, method="quant", bits=8,
                              eval_data=(images, torch.full_like(maps, 254)), show_progress=False)


def test_a_head_shared_across_feature_levels_is_left_whole_and_the_rest_compressed():
    class FPN(nn.Module):
        """A detection-style model: one head run on two levels of different sizes, a list out."""

        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = nn.Conv2d(16, 16, 3, padding=1, stride=2)
            self.c3 = nn.Conv2d(16, 16, 3, padding=1)
            self.head = nn.Conv2d(16, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            a = torch.relu(self.c1(x))
            b = torch.relu(self.c3(torch.relu(self.c2(a))))
            return [self.head(a), self.head(b)]

    x = torch.randn(20, 3, 16, 16)
    teacher = FPN().eval()
    with pytest.warns(UserWarning, match="runs on inputs of different sizes in one forward pass"):
        # prune_last: the head is the output layer, kept dense by default anyway.
        student, report = crossdistill.compress(teacher, x, n_samples=10, method="sparsity", sparsity=0.5,
                                                prune_last=True, eval_data=x[:5], show_progress=False)
    status = {row["name"]: row for row in report["sparsity"]["layers"]}
    assert "different sizes" in status["head"]["reason"] and torch.equal(student.head.weight, teacher.head.weight)
    assert float((student.c3.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert [o.shape for o in student(x[:2])] == [(2, 4, 16, 16), (2, 4, 8, 8)]


def test_a_saved_documents_output_kind_and_input_type_are_checked():
    import json

    from crossdistill.persistence.spec import FORMAT, parse_info

    doc = {"format": FORMAT, "format_version": 1, "model": "m", "spec": {}, "num_classes": 3}
    plain = parse_info(json.dumps(doc))  # files from before: a classifier on float inputs
    assert (plain.output, plain.kind, plain.input_dtype) == (None, "classes", "float32")
    read = parse_info(json.dumps({**doc, "output": "aux", "kind": "dense", "input_dtype": "int64"}))
    assert (read.output, read.kind, read.input_dtype) == ("aux", "dense", "int64")
    assert "output" not in plain.to_json() and read.to_json()["kind"] == "dense"
    for bad, why in [({"kind": "pixels"}, "'kind' must be one of"), ({"output": 3}, "'output' must be a key"),
                     ({"input_dtype": "float16"}, "'input_dtype' must be"),
                     ({"kind": "values"}, "predictions of kind 'values' have no 'num_classes'")]:
        with pytest.raises(CrossDistillError, match=why):
            parse_info(json.dumps({**doc, **bad}))


def test_scores_refuse_labels_beyond_the_classes_and_maps_with_nothing_to_score(images):
    from crossdistill.evaluation_agreement import agreement, scores

    seg = _warm(Segmenter(), images[:8])
    with pytest.raises(CrossDistillError, match="label 7 is not a class of the model, which has 5 outputs"):
        scores(seg, images[:8], torch.full((8, 12, 12), 7), kind="dense")
    with pytest.raises(CrossDistillError, match="no label to score"):
        scores(seg, images[:8], torch.full((8, 12, 12), 255), kind="dense")

    class WithArgmax(DictOut):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.fc(self.trunk(x).mean((2, 3)))
            return {"logits": logits, "pred": logits.argmax(1)}

    teacher = _warm(WithArgmax(), images)
    other = WithArgmax()
    other.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        other.fc.weight.mul_(1.01)
    # The integer argmax is not a value to compare: the error is the logits' alone.
    res = agreement(teacher, other.eval(), [images])
    with torch.no_grad():
        t, s = teacher(images)["logits"], other(images)["logits"]
    assert res["output_error"] == pytest.approx(float((s - t).pow(2).sum() / t.pow(2).sum()), rel=1e-6)


@dataclasses.dataclass
class Outputs:
    """A plain dataclass output, as many research codebases return."""

    logits: torch.Tensor
    features: torch.Tensor | None = None


class DataclassOut(DictOut):
    def forward(self, x: torch.Tensor) -> Outputs:
        h = self.trunk(x).mean((2, 3))
        return Outputs(logits=self.fc(h), features=h)


TrunkOut = collections.namedtuple("TrunkOut", "maps pooled")


class NamedTupleInside(DictOut):
    """A block that returns a named tuple to its parent."""

    class Block(nn.Module):
        def __init__(self, trunk: nn.Module) -> None:
            super().__init__()
            self.trunk = trunk

        def forward(self, x: torch.Tensor) -> TrunkOut:
            maps = self.trunk(x)
            return TrunkOut(maps, maps.mean((2, 3)))

    def __init__(self) -> None:
        super().__init__()
        self.block = self.Block(self.trunk)
        del self.trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).pooled)


@pytest.mark.parametrize("method", ["sparsity", "quant", "lowrank", "channels"])
def test_a_block_returning_a_named_tuple_is_compressed(images, method):
    # Capture copied module outputs with type(value)(generator): a named tuple raised
    # "TypeError: TrunkOut.__new__() missing 1 required positional argument".
    teacher = _warm(NamedTupleInside(), images)
    student, _ = crossdistill.compress(teacher, images, n_samples=24, method=method, show_progress=False)
    assert student(images[:2]).shape == (2, 10)


def test_a_dataclass_output_is_read_by_its_fields(images, tmp_path):
    # It was refused: "must return a tensor, or a tuple, list or dict of tensors".
    teacher = _warm(DataclassOut(), images)
    assert [t.shape[1] for t in flat(teacher(images[:2]))] == [10, 32]
    assert predictions(teacher(images[:2])) is not None and position(teacher(images[:2])) == 0
    student, report = crossdistill.compress(teacher, images, n_samples=24, keep=0.5, eval_data=images,
                                            show_progress=False)
    assert isinstance(student(images[:2]), Outputs) and report["agreement"]["output_error"] < 1
    student.crossdistill_factory = f"{__file__}:DataclassOut"
    loaded = crossdistill.load(crossdistill.save(student, tmp_path / "d.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(flat(student(images[:4])), flat(loaded(images[:4]))))
    from crossdistill.export import output_names

    assert output_names(teacher(images[:2])) == ["logits", "features"]


@dataclasses.dataclass(init=False, eq=False)
class _HFOutput(collections.OrderedDict):
    """As Hugging Face's ModelOutput: a dict and a dataclass whose None fields are no entries."""

    loss: torch.Tensor | None = None
    predicted_depth: torch.Tensor | None = None

    def __init__(self, loss=None, predicted_depth=None):
        super().__init__()
        self.loss, self.predicted_depth = loss, predicted_depth
        if predicted_depth is not None:
            self["predicted_depth"] = predicted_depth


def test_a_mapping_that_is_also_a_dataclass_is_read_as_the_mapping():
    # The dataclass branch took Hugging Face outputs before the dict one: loss=None was "the
    # predictions" of a DepthEstimatorOutput.
    from crossdistill.model_outputs import is_dataclass_instance

    depth = torch.ones(2, 1, 4, 4)
    out = _HFOutput(predicted_depth=depth)
    assert dataclasses.is_dataclass(out) and not is_dataclass_instance(out)
    assert predictions(out) is depth and flat(out) == [depth]


def test_copying_a_dataclass_output_keeps_every_field():
    # dataclasses.replace re-ran __init__: a field declared init=False came back as its default.
    from crossdistill.capture_pass import copy_tensors

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        feats: torch.Tensor | None = dataclasses.field(default=None, init=False)

    out = Out(torch.zeros(2, 3))
    out.feats = torch.ones(2, 5)
    copied = copy_tensors(out)
    assert torch.equal(copied.feats, out.feats) and copied.feats is not out.feats
    assert torch.equal(copied.logits, out.logits) and copied.logits is not out.logits


def test_a_dataclass_output_exports_to_onnx_field_by_field(images, tmp_path):
    # The exporter refused the dataclass ("Only tuples, lists and Variables"); wrapped to a tuple it
    # ran the wrapper's BatchNorms in training mode (the wrapper is built in training mode).
    pytest.importorskip("onnxruntime")
    import onnx

    from crossdistill.export import export_model

    model = _warm(DataclassOut(), images)
    res = export_model(model, tmp_path / "d.onnx", "onnx", images[:8])
    assert [o.name for o in onnx.load(str(res.path)).graph.output] == ["logits", "features"]
    assert res.max_abs_diff <= 1e-4
