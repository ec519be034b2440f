"""A segmentation model compressed from K images per class: examples/unet.py trained to segment
Fashion-MNIST garments (each pixel labelled background, or the garment's class where its
intensity is above --threshold: 11 classes), then channel pruning, sparsity and quantization by
crossdistill.compress. Prints a table; no pass/fail.

    python benchmarks/segmentation.py                          # the figures of docs/results/any_model.md
    python benchmarks/segmentation.py --train-limit 600 --test 200 --epochs 1 --width 4 --seeds 0
    python benchmarks/segmentation.py --up transposed          # ConvTranspose2d up-convolutions

The teacher is trained once (seed 0, Adam with a one-cycle schedule, batch 128, per-pixel
cross-entropy, the whole train split unless --train-limit) and kept in the crossdistill cache
(`--teacher` to choose the file). The few-shot draw takes K images per garment class (the image
labels group the draw; the layers are solved on the images alone). Each row: pixel top-1 and mean
IoU over the 11 classes on the first --test images of the test split (default all 10,000), mean
± sample std over the seeds, and the seconds of one compress call (the largest K, --threads threads).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot_bench import ROWS, cached_teacher, compressed, example, mean_spread, parser, with_threads  # noqa: E402

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel mean and std


def unet(width: int, up: str) -> torch.nn.Module:
    return example("unet", "unet", 1, 11, width, up)


def inputs_and_maps(x, y, threshold: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N×28×28×1 images -> normalised N×1×28×28 inputs and N×28×28 label maps (0 background,
    1 + the image's class on the garment)."""
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2)
    maps = torch.where(pixels[:, 0] > threshold, torch.as_tensor(y).long()[:, None, None] + 1, 0)
    return (pixels.float().div(255.0) - MEAN) / STD, maps


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, width=16, epochs=3, unit="images")
    p.add_argument("--threshold", type=int, default=25, help="pixels above it (0-255) are the garment")
    p.add_argument("--up", choices=("nearest", "transposed"), default="nearest",
                   help="the U-Net's up-sampling: nearest copies, or 2x2 ConvTranspose2d up-convolutions")
    args = p.parse_args(argv)
    return with_threads(args.threads, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from crossdistill.data import load_image_data
    from crossdistill.evaluation_agreement import scores
    from crossdistill.paths import cache_dir

    train_data, test_data = load_image_data(args.data, "train"), load_image_data(args.data, "test")
    n_train = args.train_limit or len(train_data)
    x, maps = inputs_and_maps(train_data.x[:n_train], train_data.y[:n_train], args.threshold)
    y = torch.as_tensor(train_data.y[:n_train]).long()
    xt, mt = inputs_and_maps(test_data.x[: args.test], test_data.y[: args.test], args.threshold)
    up = "" if args.up == "nearest" else f"_{args.up}"
    path = args.teacher or cache_dir() / "teachers" / (f"unet{up}_w{args.width}_fmnist_seg_t{args.threshold}_{n_train}"
                                                        f"_e{args.epochs}.pt")
    teacher = cached_teacher(unet(args.width, args.up), path, x, maps, args.epochs)
    params = sum(q.numel() for q in teacher.parameters())
    t = scores(teacher, xt, mt, kind="dense")
    print(f"U-Net width {args.width}, {args.up} up-sampling ({params:,} parameters) trained {args.epochs} epochs on {n_train} Fashion-MNIST "
          f"train images to label each pixel background or garment class (11 classes, threshold {args.threshold}); "
          f"teacher pixel top-1 {t['top1']:.2f} %, mean IoU {t['miou']:.2f} % on {len(xt)} test images; "
          f"seeds {args.seeds}, mean ± sample std; {args.threads} threads")
    print("| method | " + " | ".join(f"K={k} pixel top-1 % | K={k} mIoU %" for k in args.shots) +
          f" | parameters | seconds (K={args.shots[-1]}) |")
    print("|---|" + "---|---|" * len(args.shots) + "---|---|")
    for label in args.rows:
        cells, seconds, size = [], 0.0, 0
        for k in args.shots:
            top, miou = [], []
            for seed in args.seeds:
                student, seconds = compressed(teacher, x, y, k, seed, ROWS[label])
                size = sum(q.numel() for q in student.parameters())
                s = scores(student, xt, mt, kind="dense")
                top.append(s["top1"])
                miou.append(s["miou"])
            cells += [mean_spread(top), mean_spread(miou)]
        print(f"| {label} | " + " | ".join(cells) + f" | {size:,} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
