"""A layer's quadratic problem accumulated straight from its inputs, for objectives that are sums
of soft terms (every built-in one).

A soft term (α, β) is ‖W^t x̃_t − W x̃_s‖² with x̃_t = (1−α) x_t + α x_s, x̃_s = β x_t + (1−β) x_s,
i.e. H = E[x̃_s x̃_sᵀ], B = E[(W^t x̃_t) x̃_sᵀ], c = E‖W^t x̃_t‖². The general route
(`moments.MomentAccumulator`) sums the three d×d matrices C_tt, C_ss, C_ts and mixes them
afterwards; here the mixed inputs are formed batch by batch, so each distinct student-side input
costs one d×d Gram and the teacher side enters only through the teacher layer's outputs W^t x̃_t
(out rows instead of d columns: for a 3×3 conv with as many outputs as inputs, 2/9 of a Gram).
The default soft(0, 0.3) needs one Gram instead of three; mixed needs two. Where the teacher-side
input equals the student-side one (α + β = 1: correction, imitation), B = W^t H needs no pass.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

from crossdistill import conv_gram, distributed
from crossdistill.capture import conv_groups, patches
from crossdistill.moments import CHUNK_IMAGES, DTYPE, check_pair, images_per_chunk
from crossdistill.problem import QuadraticProblem

# (weight, alpha, beta) of one soft term; an objective is their weighted sum.
Term = tuple[float, float, float]


def _mix(xt: torch.Tensor, xs: torch.Tensor, on_teacher: float) -> torch.Tensor:
    """on_teacher · x_t + (1 − on_teacher) · x_s, without a copy at the ends."""
    if on_teacher == 1.0:
        return xt
    if on_teacher == 0.0:
        return xs
    return on_teacher * xt + (1.0 - on_teacher) * xs


class ProblemAccumulator:
    """Add paired (teacher, student) layer inputs batch by batch, then `finish_groups()`: one
    QuadraticProblem per conv group (see moments.MomentAccumulator for the group layout)."""

    def __init__(self, module: nn.Module, w_teacher: torch.Tensor, terms: Sequence[Term],
                 chunk_images: int = CHUNK_IMAGES) -> None:
        if not terms:
            raise ValueError("an objective of no terms")
        self.module = module
        self.chunk = chunk_images
        self._sized = False
        self.groups = conv_groups(module)
        self.terms = [(float(w), float(a), float(b)) for w, a, b in terms]
        self.w32 = w_teacher.detach().float()  # (out, D): the products run in float32, as the moments'
        self.w64 = w_teacher.detach().to(DTYPE)
        # Teacher side on the teacher's share 1 − α; tied terms (teacher side = student side) take B from H.
        self.tied = [abs((1.0 - a) - b) < 1e-12 for _, a, b in self.terms]
        self.betas = sorted({b for _, _, b in self.terms})
        self._H: dict[float | str, torch.Tensor] = {}
        self._B: dict[int, torch.Tensor] = {}
        self._c: dict[int, torch.Tensor] = {}
        self.count = 0
        self._summed = False
        self._finished = False

    # -- accumulation ---------------------------------------------------------------------------
    def add(self, x_teacher: torch.Tensor, x_student: torch.Tensor) -> None:
        check_pair(x_teacher, x_student)
        # Every Gram here is symmetric (the student-side input with itself).
        shifted = x_teacher.dim() == 4 and conv_gram.applies(self.module, *x_teacher.shape[2:],
                                                             symmetric_channels=x_teacher.shape[1])
        # Where the student's input is still the teacher's (the first layer; any layer nothing
        # before it changed), every term's inputs are x_t and its loss at W^t is exactly zero:
        # one shared Gram T, and B = W^t T, c = tr(W^t T W^tᵀ) from it, keep it so (a rounding
        # residue there would be the whole loss, and a negative one).
        same = torch.equal(x_teacher, x_student)
        if not self._sized:  # once: a layer's batches differ in their count only
            self.chunk, self._sized = images_per_chunk(self.module, x_teacher, self.chunk), x_teacher.shape[0] > 0
        chunk = self.chunk
        for start in range(0, x_teacher.shape[0], chunk):
            xt = x_teacher[start : start + chunk].float()
            xs = x_student[start : start + chunk].float()
            if same:
                self._add_same(xt, shifted)
            elif shifted:
                self._add_shifted(xt, xs)
            else:
                self._add_unfolded(xt, xs)

    def _accumulate(self, store: dict, key: object, value: torch.Tensor) -> None:
        # A copy even when `value` is float64 already: one Gram is stored under several keys
        # (each β and "same"), which must not share one tensor that later chunks add to.
        value = value.to(DTYPE, copy=True)
        if key in store:
            store[key] += value
        else:
            store[key] = value

    def _add_same(self, x: torch.Tensor, shifted: bool) -> None:
        if shifted:
            gram = conv_gram.shifted_gram(x, x, self.module.kernel_size).unsqueeze(0)
            self.count += x.shape[0] * x.shape[2] * x.shape[3]
        else:
            p = patches(self.module, x)
            n, d_all, positions = p.shape
            p4 = p.reshape(n, self.groups, d_all // self.groups, positions)
            gram = torch.einsum("ngdl,ngel->gde", p4, p4)
            self.count += n * positions
        for b in self.betas:
            self._accumulate(self._H, b, gram)
        self._accumulate(self._H, "same", gram)

    def _add_shifted(self, xt: torch.Tensor, xs: torch.Tensor) -> None:
        """A 'same' stride-1 conv on a large map: Grams from shifted maps (conv_gram.py), the
        teacher side as the conv's output and its weight-gradient against the student side."""
        m = self.module
        kernel = m.kernel_size
        student_side = {b: _mix(xt, xs, b) for b in self.betas}
        for b, x in student_side.items():
            self._accumulate(self._H, b, conv_gram.shifted_gram(x, x, kernel).unsqueeze(0))  # (groups=1, D, D)
        shape = (self.w32.shape[0], -1, *kernel)
        for k, (_, a, b) in enumerate(self.terms):
            if self.tied[k]:
                continue
            y = F.conv2d(_mix(xt, xs, 1.0 - a), self.w32.reshape(shape), None, m.stride, m.padding, m.dilation)
            x = student_side[b]
            # One weight-gradient per image in float32, summed in float64: over a whole chunk
            # (16 × H × W terms an entry) float32 lost a decimal digit against the Grams (1e-6
            # relative); per image it is 2e-8, and 2x faster than the chunk in float64.
            size = (self.w32.shape[0], x.shape[1], *kernel)
            grad = torch.zeros(size, dtype=DTYPE, device=x.device)
            for i in range(x.shape[0]):
                grad += conv2d_weight(x[i : i + 1], size, y[i : i + 1], m.stride, m.padding, m.dilation).to(DTYPE)
            self._accumulate(self._B, k, grad.reshape(self.w32.shape[0], -1))
            self._accumulate(self._c, k, (y * y).sum().reshape(1))  # one group: the shape of the unfolded route's
        self.count += xt.shape[0] * xt.shape[2] * xt.shape[3]

    def _add_unfolded(self, xt: torch.Tensor, xs: torch.Tensor) -> None:
        g = self.groups
        pt = patches(self.module, xt)
        ps = patches(self.module, xs)
        n, d_all, positions = pt.shape
        d = d_all // g
        student_side = {b: _mix(pt, ps, b).reshape(n, g, d, positions) for b in self.betas}
        for b, x in student_side.items():
            if g == 1 and positions > d:
                # Many positions per image (large maps): per-image products, no (patches, D) copy.
                self._accumulate(self._H, b, torch.bmm(x[:, 0], x[:, 0].transpose(1, 2)).sum(0, keepdim=True))
            elif g == 1:
                flat = x[:, 0].transpose(1, 2).reshape(-1, d)
                self._accumulate(self._H, b, (flat.T @ flat).unsqueeze(0))
            else:
                self._accumulate(self._H, b, torch.einsum("ngdl,ngel->gde", x, x))
        w = self.w32.reshape(g, -1, d)  # (groups, rows of a group, D)
        for k, (_, a, b) in enumerate(self.terms):
            if self.tied[k]:
                continue
            x_t = _mix(pt, ps, 1.0 - a).reshape(n, g, d, positions)
            y = torch.einsum("god,ngdl->ngol", w, x_t)
            self._accumulate(self._B, k, torch.einsum("ngol,ngdl->god", y, student_side[b]).reshape(-1, d))
            self._accumulate(self._c, k, (y * y).sum(dim=(0, 2, 3)))
        self.count += n * positions

    def sum_over_processes(self) -> None:
        """Add up the shards of every process (crossdistill.distributed), once, before finish."""
        if not distributed.active() or self._summed:
            return
        if not self._H:
            raise ValueError("no samples were accumulated on this process")
        # Every process sums the same entries in the same order, whichever it happened to fill
        # (whether a shard's student inputs equalled the teacher's is decided per batch).
        some_h = next(iter(self._H.values()))
        d = some_h.shape[-1]
        for key in [*self.betas, "same"]:
            self._H.setdefault(key, torch.zeros_like(some_h))
            distributed.sum_(self._H[key])
        for k, tied in enumerate(self.tied):
            if not tied:
                self._B.setdefault(k, torch.zeros(self.w64.shape[0], d, dtype=DTYPE, device=some_h.device))
                self._c.setdefault(k, torch.zeros(self.groups, dtype=DTYPE, device=some_h.device))
                distributed.sum_(self._B[k])
                distributed.sum_(self._c[k])
        self.count = int(distributed.sum_number(self.count))
        self._summed = True

    # -- the problems ---------------------------------------------------------------------------
    def finish_groups(self) -> list[QuadraticProblem]:
        """One problem per conv group, in group order (one for every other layer); undamped."""
        if self._finished:
            raise ValueError("these moments were already finished")
        if not self._H or self.count == 0:
            raise ValueError("no samples were accumulated")
        self._finished = True
        n = float(self.count)
        g = self.groups
        H = {b: h.div_(n).reshape(g, h.shape[-1], h.shape[-1]) for b, h in self._H.items()}
        same = H.pop("same", None)  # the share of the samples where x_s = x_t (see add)
        w = self.w64.reshape(g, -1, self.w64.shape[1])
        problems = []
        for grp in range(g):
            w_g = w[grp]
            H_sum = B_sum = None
            c_sum = 0.0
            for k, (weight, _, b) in enumerate(self.terms):
                h = H[b][grp]
                if self.tied[k]:
                    wh = w_g @ h
                    B, c = wh, float((wh * w_g).sum())
                else:
                    B, c = torch.zeros_like(w_g), 0.0
                    if k in self._B:
                        B = self._B[k].reshape(g, -1, h.shape[0])[grp] / n
                        c = float(self._c[k].reshape(-1)[grp]) / n
                    if same is not None:
                        ws = w_g @ same[grp]
                        B, c = B + ws, c + float((ws * w_g).sum())
                # A single term of weight 1 (every objective but mixed) hands H over without a copy.
                H_sum = (h if weight == 1.0 else weight * h) if H_sum is None else H_sum + weight * h
                B_sum = (B if weight == 1.0 else weight * B) if B_sum is None else B_sum + weight * B
                c_sum += weight * c
            problems.append(QuadraticProblem(H=H_sum, B=B_sum, c=c_sum, w_teacher=w_g))
        self._H, self._B, self._c = {}, {}, {}
        return problems
