"""The problem accumulated straight from the inputs (problem_moments.py) equals the objective's
problem built from the three moment matrices, for every built-in objective and layer kind."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from crossdistill.capture import weight_matrix
from crossdistill.moments import MomentAccumulator
from crossdistill.objectives import OBJECTIVES
from crossdistill.problem_moments import ProblemAccumulator

OBJECTIVE_SETTINGS = [("soft", {}), ("soft", {"alpha": 0.4, "beta": 0.2}), ("soft", {"alpha": 0.3, "beta": 0.7}),
                      ("nocross", {}), ("correction", {}), ("imitation", {}), ("mixed", {"mu": 0.6})]

LAYERS = {
    "conv3x3-same-large-map": (lambda: nn.Conv2d(6, 5, 3, padding=1), (7, 6, 14, 14)),  # shifted Grams
    "conv3x3-small-map": (lambda: nn.Conv2d(6, 5, 3, padding=1), (7, 6, 6, 6)),
    "conv-stride2": (lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1), (5, 4, 9, 9)),
    "conv1x1": (lambda: nn.Conv2d(6, 3, 1), (5, 6, 13, 13)),
    "grouped": (lambda: nn.Conv2d(6, 9, 3, padding=1, groups=3), (5, 6, 8, 8)),
    "depthwise": (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (5, 4, 13, 13)),
    "linear": (lambda: nn.Linear(10, 4), (9, 10)),
    "linear-tokens": (lambda: nn.Linear(6, 5), (3, 7, 6)),
}


@pytest.mark.parametrize("layer_key", list(LAYERS))
@pytest.mark.parametrize("objective_key,settings", OBJECTIVE_SETTINGS)
def test_problem_from_inputs_equals_problem_from_moments(layer_key, objective_key, settings):
    torch.manual_seed(0)
    make, shape = LAYERS[layer_key]
    layer = make()
    objective = OBJECTIVES[objective_key](**settings)
    x_t = torch.randn(shape)
    x_s = x_t + 0.5 * torch.randn(shape)  # the student's input: near the teacher's, not equal
    moments = MomentAccumulator(layer, chunk_images=3)
    direct = ProblemAccumulator(layer, weight_matrix(layer), objective.terms(), chunk_images=3)
    for part in (slice(0, 2), slice(2, None)):  # two batches, chunks of 3 images: the sums add up
        moments.add(x_t[part], x_s[part])
        direct.add(x_t[part], x_s[part])
    got = direct.finish_groups()
    ref = moments.finish_groups()
    assert len(got) == len(ref)
    rows = weight_matrix(layer).shape[0] // len(ref)
    for g, (p, m) in enumerate(zip(got, ref)):
        w_g = weight_matrix(layer).double()[g * rows: (g + 1) * rows]
        want = objective.build(m, w_g)
        scale = want.H.abs().max()
        torch.testing.assert_close(p.H, want.H, rtol=1e-5, atol=1e-6 * scale)
        torch.testing.assert_close(p.B, want.B, rtol=1e-5, atol=1e-5 * want.B.abs().max())
        assert p.c == pytest.approx(want.c, rel=1e-5)
        torch.testing.assert_close(p.w_teacher, w_g)
        # The same loss surface: the teacher's weight and a random one cost the same on both.
        w_rand = torch.randn_like(w_g)
        assert p.loss(w_rand) == pytest.approx(want.loss(w_rand), rel=1e-5, abs=1e-6 * abs(want.c))


@pytest.mark.parametrize("layer_key", ["conv3x3-same-large-map", "grouped", "linear"])
def test_where_the_student_input_is_the_teachers_the_teacher_weight_costs_exactly_nothing(layer_key):
    # The first layer: x_s = x_t, so W^t is the optimum and its loss is 0, not a rounding residue
    # (which would be the whole reported loss, and could be negative); later batches may differ.
    torch.manual_seed(1)
    make, shape = LAYERS[layer_key]
    layer = make()
    w = weight_matrix(layer)
    for objective_key, settings in OBJECTIVE_SETTINGS:
        acc = ProblemAccumulator(layer, w, OBJECTIVES[objective_key](**settings).terms())
        x = torch.randn(shape)
        acc.add(x, x.clone())
        for p in acc.finish_groups():
            assert abs(p.loss(p.w_teacher)) <= 1e-12 * max(p.c, 1.0), objective_key
    # Mixed batches (one equal, one not) still give the moments route's problem.
    make, shape = LAYERS[layer_key]
    objective = OBJECTIVES["soft"]()
    x_t, x_s = torch.randn(shape), torch.randn(shape)
    moments, direct = MomentAccumulator(layer), ProblemAccumulator(layer, w, objective.terms())
    for a, b in ((x_t, x_s), (x_t, x_t.clone()), (x_s, x_t)):  # either kind of batch first
        moments.add(a, b)
        direct.add(a, b)
    rows = w.shape[0] // moments.groups
    for g, (p, m) in enumerate(zip(direct.finish_groups(), moments.finish_groups())):
        want = objective.build(m, w.double()[g * rows: (g + 1) * rows])
        torch.testing.assert_close(p.B, want.B, rtol=1e-5, atol=1e-5 * want.B.abs().max())
        assert p.c == pytest.approx(want.c, rel=1e-5)


def test_the_default_objective_needs_one_gram_not_three():
    # What makes it faster: one student-side Gram for soft(0, 0.3), none for the teacher side.
    layer = nn.Conv2d(4, 4, 3, padding=1)
    acc = ProblemAccumulator(layer, weight_matrix(layer), OBJECTIVES["soft"]().terms())
    acc.add(torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6))
    assert len(acc._H) == 1 and acc._H[0.3].shape[-1] == 36


def test_finishing_twice_or_empty_is_refused():
    layer = nn.Linear(3, 2)
    acc = ProblemAccumulator(layer, weight_matrix(layer), [(1.0, 0.0, 0.0)])
    with pytest.raises(ValueError, match="no samples"):
        acc.finish_groups()
    acc.add(torch.randn(4, 3), torch.randn(4, 3))
    acc.finish_groups()
    with pytest.raises(ValueError, match="already finished"):
        acc.finish_groups()


def test_a_gram_stored_under_several_keys_is_not_one_shared_tensor():
    # One Gram goes under each β and "same"; a float64 value was stored as it came, so the keys
    # shared one tensor and every later chunk was added to it once per key.
    store: dict = {}
    gram = torch.eye(3, dtype=torch.float64)
    for key in (0.3, "same"):
        ProblemAccumulator._accumulate(None, store, key, gram)  # type: ignore[arg-type]
    ProblemAccumulator._accumulate(None, store, "same", gram)  # type: ignore[arg-type]
    assert torch.equal(store[0.3], torch.eye(3, dtype=torch.float64))
    assert torch.equal(store["same"], 2 * torch.eye(3, dtype=torch.float64))
    assert torch.equal(gram, torch.eye(3, dtype=torch.float64))  # the caller's tensor is left alone
