"""Seconds of the layer moments (ProblemAccumulator.add, default objective's terms) of ResNet-50's
pointwise convs: the stage whose F.unfold copy a 1x1 conv no longer makes (docs/results/speed.md).
Random inputs (seed 0), one thread; prints a table, no pass/fail.

    python benchmarks/pointwise_moments.py                 # 16 images, ResNet-50's six 1x1 shapes
    python benchmarks/pointwise_moments.py --images 4 --scale 4
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

# (in channels, out channels, map side) of ResNet-50's 1x1 convs at 224x224.
SHAPES = [(256, 64, 56), (64, 256, 56), (512, 128, 28), (1024, 256, 14), (256, 1024, 14), (2048, 512, 7)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--scale", type=int, default=1, help="divide channels and map sides by this (quick runs)")
    args = parser.parse_args(argv)
    from crossdistill.problem_moments import ProblemAccumulator

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print("| in | out | map | seconds |\n|---:|---:|---:|---:|")
    total = 0.0
    for cin, cout, side in SHAPES:
        cin, cout, side = max(cin // args.scale, 1), max(cout // args.scale, 1), max(side // args.scale, 1)
        conv = nn.Conv2d(cin, cout, 1, bias=False)
        xt = torch.randn(args.images, cin, side, side, generator=g)
        xs = xt + 0.1 * torch.randn(args.images, cin, side, side, generator=g)
        acc = ProblemAccumulator(conv, conv.weight.detach().reshape(cout, -1).double(), [(1.0, 0.0, 0.3)])
        start = time.perf_counter()
        acc.add(xt, xs)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"| {cin} | {cout} | {side} | {seconds:.3f} |")
    print(f"| all | | | {total:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
