"""What `compress` leaves in the caller's process: their model's buffers and attributes, torch's
global random state and grad mode, and no progress bar left open after an interrupt."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.train_flags import buffers_kept


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(torch.relu(self.b1(self.c1(x)))).mean((2, 3)))


class Stateful(Net):
    """A forward that keeps state of its own, in each of the ways a forward can."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))  # reassigned: a new tensor each call
        self.register_buffer("last_batch", torch.zeros(2))  # reassigned with another size
        self.history: list[int] = []  # filled in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = self.calls + 1
        self.last_batch = torch.zeros(x.shape[0])
        self.history.append(x.shape[0])
        return super().forward(x)


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.arange(n) % 4


def test_state_a_forward_reassigns_or_fills_in_place_comes_back():
    # Before, the buffers were copied back into the tensors they had been: one the forward replaced
    # kept the replacement (calls went 1 -> 6), one of another size was skipped, a list kept its new
    # items. Now each is the very tensor (or list content) it was.
    model = Stateful().eval()
    model(torch.randn(2, 3, 8, 8))
    calls, last, history = model.calls, model.last_batch, list(model.history)
    x, y = data()
    crossdistill.compress(model, x, labels=y, shots=2, flops=0.5, show_progress=False)
    assert model.calls is calls and float(model.calls) == 1.0
    assert model.last_batch is last and model.last_batch.shape == (2,)
    assert model.history == history
    assert dict(model.named_buffers()).keys() == {"calls", "last_batch", "b1.running_mean", "b1.running_var",
                                                  "b1.num_batches_tracked"}


def test_buffers_kept_removes_buffers_the_block_registered():
    model = Net()
    with buffers_kept(model):
        model.register_buffer("scratch", torch.ones(3))
        model.b1.running_mean.add_(1.0)
    assert "scratch" not in dict(model.named_buffers())
    assert torch.equal(model.b1.running_mean, torch.zeros(8))


def test_the_callers_random_state_is_left_where_it_was():
    # Low rank builds its factor layers (their default init draws from torch's global generator),
    # so a user's seeded sequence went on elsewhere after a compress.
    x, y = data()
    model = Net().eval()
    for settings in ({"method": "lowrank", "rank_ratio": 0.5}, {"flops": 0.5}):
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        crossdistill.compress(model, x, labels=y, shots=2, show_progress=False, **settings)
        assert torch.equal(torch.rand(3), expected), settings


def test_grad_mode_comes_back_after_an_interrupt_inside_no_grad():
    # An interrupt that lands inside `torch.no_grad().__enter__` left gradients off for the session.
    from crossdistill.train_flags import global_state_kept

    assert torch.is_grad_enabled()
    with pytest.raises(KeyboardInterrupt):
        with global_state_kept():
            torch.set_grad_enabled(False)
            raise KeyboardInterrupt
    assert torch.is_grad_enabled()


def test_low_rank_students_are_not_run_in_training_mode_for_layers_they_renamed():
    # The factor layers (c1.0, c1.1) were taken for layers the eval-mode trace never ran, so the
    # student and teacher were run again in training mode for nothing (drawing Dropout's randoms).
    from crossdistill.capture import SOLVABLE
    from crossdistill.pipeline import _training_only_layers_broken

    x, y = data()
    teacher = Net().eval()
    student, _ = crossdistill.compress(teacher, x, labels=y, shots=2, method="lowrank", rank_ratio=0.5,
                                       show_progress=False)
    assert any(n.endswith(".0") for n, _ in student.named_modules())  # the factors are there
    runs = []
    student.register_forward_hook(lambda m, i, o: runs.append(1))  # copies carry it
    ran = {n for n, m in teacher.named_modules() if isinstance(m, SOLVABLE)}
    assert _training_only_layers_broken(teacher, student, x[:2], ran) is None
    assert runs == []
    # Through compress, with the layers its own trace found: no model is run in training mode.
    import warnings

    trained: list[bool] = []
    watched = Net().eval()
    watched.register_forward_hook(lambda m, i, o: trained.append(m.training))  # copies carry it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crossdistill.compress(watched, x, labels=y, shots=2, method="lowrank", rank_ratio=0.5, show_progress=False)
    assert trained and not any(trained)


def test_progress_bars_are_closed_when_the_work_is_interrupted(monkeypatch):
    # A bar left open in an interactive session made the next run draw its bar a line lower.
    from tqdm import tqdm

    import crossdistill.pipeline as pipeline

    def interrupted(*args, progress=None, **kwargs):
        progress(0, 3, "c1")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "distill_layers", interrupted)
    x, y = data()
    with pytest.raises(KeyboardInterrupt) as interrupt:
        crossdistill.compress(Net().eval(), x, labels=y, shots=2, show_progress=True)
    # The traceback is kept, as an interactive session keeps it (sys.last_traceback): its frames
    # hold the bar, so only closing it makes it go.
    assert interrupt.tb is not None
    assert not [b for b in list(tqdm._instances) if "layer" in str(b.unit)]


def test_hooks_of_the_callers_own_are_named_before_they_run_hundreds_of_times():
    import warnings

    from crossdistill.checks import HookWarning

    model = Net().eval()
    seen: list[int] = []
    handle = model.c2.register_forward_hook(lambda m, i, o: seen.append(1))
    x, y = data()
    with pytest.warns(HookWarning, match=r"hooks are registered on 1 module of the model \(c2\)"):
        crossdistill.compress(model, x, labels=y, shots=2, flops=0.5, show_progress=False)
    assert len(seen) > 10  # why it is worth a word: they ran on the compression's every pass
    handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error", HookWarning)
        crossdistill.compress(model, x, labels=y, shots=2, flops=0.5, show_progress=False)


def test_compress_inside_no_grad_or_inference_mode_fine_tunes_as_outside():
    # The fine-tune's backward failed under the caller's torch.no_grad() ("element 0 of tensors
    # does not require grad"), and the channel trace under torch.inference_mode() was blamed on
    # the model ("cannot trace Net").
    x, y = data()
    model = Net().eval()
    settings = dict(labels=y, shots=2, flops=0.5, finetune_epochs=2, show_progress=False)
    reference, _ = crossdistill.compress(model, x, **settings)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            student, _ = crossdistill.compress(model, x, **settings)
        assert torch.equal(student(x[:4]), reference(x[:4])), context
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    with torch.inference_mode():
        made_inside = Net().eval()
    with pytest.raises(crossdistill.CrossDistillError, match="made under torch.inference_mode"):
        crossdistill.compress(made_inside, x, **settings)


def test_warnings_point_at_the_callers_line():
    # They named lines inside the library (pipeline.py, coverage.py, fewshot.py), which tells a
    # user of the Python API nothing about which of their calls it was.
    import warnings

    class Padded(Net):
        def __init__(self) -> None:
            super().__init__()
            self.c2 = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")  # left uncompressed
            self.c3 = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.c3(self.c2(torch.relu(self.b1(self.c1(x))))).mean((2, 3)))

    x, y = data()
    y = y % 3  # a class of the four never present
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crossdistill.compress(Padded().eval(), x, labels=y, shots=2, method="sparsity", sparsity=0.5,
                              show_progress=False)
    ours = [w for w in caught if type(w.message).__module__.startswith("crossdistill")]
    assert {type(w.message).__name__ for w in ours} >= {"CompressionWarning", "ClassCoverageWarning"}
    assert all(w.filename == __file__ for w in ours), [(type(w.message).__name__, w.filename) for w in ours]
