"""Second moments of the unfolded layer inputs, accumulated batch by batch.

Every cross-distillation loss is quadratic in the student weight, so these three matrices are
all the data a layer's solve needs; memory does not grow with the number of samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill import conv_gram, distributed
from crossdistill.capture import TRANSPOSED, conv_groups, patches

# float64 for the sums and the solves: with few samples the moments are nearly singular.
DTYPE = torch.float64
# Images per float32 product: one huge unfold of a whole batch is slow and memory-hungry; the
# processes of a distributed run shard on multiples of it (crossdistill.distributed.shard).
CHUNK_IMAGES = 16
# Bytes of one chunk's unfolded patches (each side) past which a chunk takes fewer images: one
# image of a Conv3d, or of a transposed conv over its zero-stuffed input, unfolds to tens of MB.
PATCH_BYTES = 1 << 28


def images_per_chunk(module: nn.Module, x: torch.Tensor, most: int) -> int:
    """`most`, halved while a chunk's patches would pass PATCH_BYTES (a power of two, so that the
    shards of a distributed run, multiples of CHUNK_IMAGES, stay whole chunks). Conv2d, Conv1d
    and Linear layers unfold to little per image and keep `most` without the measuring unfold."""
    if not isinstance(module, (nn.Conv3d, *TRANSPOSED)) or x.shape[0] == 0:
        return most
    per_image = patches(module, x[:1].float()).numel() * 4
    chunk = most
    while chunk > 1 and chunk * per_image > PATCH_BYTES:
        chunk //= 2
    return chunk


@dataclass
class Moments:
    """C_tt = E[x_t x_tᵀ], C_ss = E[x_s x_sᵀ], C_ts = E[x_t x_sᵀ] over all patches."""

    tt: torch.Tensor
    ss: torch.Tensor
    ts: torch.Tensor
    count: int

    @property
    def st(self) -> torch.Tensor:
        return self.ts.T


class MomentAccumulator:
    """Add paired (teacher, student) layer inputs batch by batch, then `finish()`.

    A grouped conv's output rows of group g see only group g's input channels, i.e. the columns
    g·D … (g+1)·D − 1 of the unfolded input (channel-major, D = in/groups·k²). Its moments are
    kept as one D×D block per group (`finish_groups()`): the cross-group blocks are never
    needed, and for a depthwise conv they would be almost all of a (C·k²)² matrix."""

    def __init__(self, module: nn.Module, chunk_images: int = CHUNK_IMAGES) -> None:
        self.module = module
        self.chunk = chunk_images
        self._sized = False
        self.groups = conv_groups(module)
        self._tt: torch.Tensor | None = None
        self._ss: torch.Tensor | None = None
        self._ts: torch.Tensor | None = None
        self.count = 0
        self._summed = False
        self._finished = False

    def add(self, x_teacher: torch.Tensor, x_student: torch.Tensor) -> None:
        check_pair(x_teacher, x_student)
        if x_teacher.dim() == 4 and conv_gram.applies(self.module, *x_teacher.shape[2:]):
            self._add_shifted(x_teacher, x_student)
            return
        if not self._sized:  # once: a layer's batches differ in their count only
            self.chunk, self._sized = images_per_chunk(self.module, x_teacher, self.chunk), x_teacher.shape[0] > 0
        chunk = self.chunk
        for start in range(0, x_teacher.shape[0], chunk):
            pt = patches(self.module, x_teacher[start : start + chunk].float())
            ps = patches(self.module, x_student[start : start + chunk].float())
            if self._tt is None:
                d = pt.shape[-2] // self.groups
                shape = (d, d) if self.groups == 1 else (self.groups, d, d)
                self._tt = torch.zeros(shape, dtype=DTYPE, device=pt.device)
                self._ss = torch.zeros(shape, dtype=DTYPE, device=pt.device)
                self._ts = torch.zeros(shape, dtype=DTYPE, device=pt.device)
            # A chunk's products in float32 (fast), the running sums in float64 (exact enough
            # however many chunks are added).
            gram = _gram if self.groups == 1 else self._group_gram
            self._tt += gram(pt, pt)
            self._ss += gram(ps, ps)
            self._ts += gram(pt, ps)
            self.count += pt.shape[0] * pt.shape[2]

    def _add_shifted(self, x_teacher: torch.Tensor, x_student: torch.Tensor) -> None:
        """A 'same' stride-1 conv on a large map: the Grams from shifted maps (conv_gram.py),
        2-4x faster than the unfolded products, without the im2col copy."""
        kernel = self.module.kernel_size
        for start in range(0, x_teacher.shape[0], self.chunk):
            xt = x_teacher[start : start + self.chunk].float()
            xs = x_student[start : start + self.chunk].float()
            tt = conv_gram.shifted_gram(xt, xt, kernel).to(DTYPE)
            if self._tt is None:
                self._tt, self._ss, self._ts = tt, torch.zeros_like(tt), torch.zeros_like(tt)
            else:
                self._tt += tt
            self._ss += conv_gram.shifted_gram(xs, xs, kernel).to(DTYPE)
            self._ts += conv_gram.shifted_gram(xt, xs, kernel).to(DTYPE)
            self.count += xt.shape[0] * xt.shape[2] * xt.shape[3]

    def sum_over_processes(self) -> None:
        """Add up the shards of every process (crossdistill.distributed), once, before finish."""
        if not distributed.active() or self._summed:
            return
        assert self._tt is not None and self._ss is not None and self._ts is not None
        for t in (self._tt, self._ss, self._ts):
            distributed.sum_(t)
        self.count = int(distributed.sum_number(self.count))
        self._summed = True

    def _group_gram(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(groups, D, D): per group, the sum over images and positions of a_g b_gᵀ, as float64."""
        n, _, positions = a.shape
        a4 = a.reshape(n, self.groups, -1, positions)
        b4 = a4 if b is a else b.reshape(n, self.groups, -1, positions)
        return torch.einsum("ngdl,ngel->gde", a4, b4).to(DTYPE)

    def finish(self) -> Moments:
        """The layer's moments (a layer of one group; see `finish_groups` for grouped convs)."""
        if self.groups != 1:
            raise ValueError(f"a conv of {self.groups} groups has moments per group: use finish_groups()")
        return self.finish_groups()[0]

    def finish_groups(self) -> list[Moments]:
        """One Moments per conv group, in group order (a single one for every other layer).
        The sums become the means in place and are handed over (for a 4608-wide layer each of
        the three is 170 MB): finishing twice is an error."""
        if self._finished:
            raise ValueError("these moments were already finished")
        if self._tt is None or self.count == 0:
            raise ValueError("no samples were accumulated")
        assert self._ss is not None and self._ts is not None
        n = float(self.count)
        tt, ss, ts = self._tt.div_(n), self._ss.div_(n), self._ts.div_(n)
        self._tt = self._ss = self._ts = None
        self._finished = True
        if self.groups == 1:
            return [Moments(tt=tt, ss=ss, ts=ts, count=self.count)]
        return [Moments(tt=tt[g], ss=ss[g], ts=ts[g], count=self.count) for g in range(self.groups)]


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over images of a_n b_nᵀ, as float64."""
    n, d, positions = a.shape
    if positions > d:
        # Many positions per image (early, large feature maps): per-image products avoid
        # copying the patches into one (patches, D) matrix.
        return torch.bmm(a, b.transpose(1, 2)).sum(0, dtype=DTYPE)
    flat_a = a.transpose(1, 2).reshape(-1, d)
    flat_b = flat_a if b is a else b.transpose(1, 2).reshape(-1, d)
    return (flat_a.T @ flat_b).to(DTYPE)


def check_pair(x_teacher: torch.Tensor, x_student: torch.Tensor) -> None:
    """A layer's teacher and student inputs must describe the same samples, shape for shape."""
    if x_teacher.shape != x_student.shape:
        raise ValueError(f"teacher input {tuple(x_teacher.shape)} != student input {tuple(x_student.shape)}")

