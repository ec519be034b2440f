"""A segmentation model compressed from K images per class: examples/unet.py trained to segment
Fashion-MNIST garments (each pixel labelled background, or the garment's class where its
intensity is above --threshold: 11 classes), then channel pruning, sparsity and quantization by
crossdistill.compress. Prints a table; no pass/fail.

    python benchmarks/segmentation.py                          # the figures of docs/results/any_model.md
    python benchmarks/segmentation.py --train-limit 600 --test 200 --epochs 1 --width 4 --seeds 0

The teacher is trained once (seed 0, Adam with a one-cycle schedule, batch 128, per-pixel
cross-entropy, the whole train split unless --train-limit) and kept in the crossdistill cache
(`--teacher` to choose the file). The few-shot draw takes K images per garment class (the image
labels group the draw; the layers are solved on the images alone). Each row: pixel top-1 and mean
IoU over the 11 classes on the first --test images of the test split (default all 10,000), mean
± sample std over the seeds, and the seconds of one compress call (the largest K, --threads threads).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FMNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist; else the name is downloaded
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel mean and std


def unet(width: int) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("example_unet", EXAMPLES / "unet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    torch.manual_seed(0)
    return module.unet(1, 11, width)


def inputs_and_maps(x, y, threshold: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N×28×28×1 images -> normalised N×1×28×28 inputs and N×28×28 label maps (0 background,
    1 + the image's class on the garment)."""
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2)
    maps = torch.where(pixels[:, 0] > threshold, torch.as_tensor(y).long()[:, None, None] + 1, 0)
    return (pixels.float().div(255.0) - MEAN) / STD, maps


def train(model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, epochs: int) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), maps[idx]).backward()
            opt.step()
            sched.step()
        print(f"  teacher epoch {epoch + 1}/{epochs} done", flush=True)
    model.eval()


ROWS = {
    "channels keep 0.5 (closed form)": {"keep": 0.5},
    "channels keep 0.5, prune-only": {"keep": 0.5, "solver": "prune-only"},
    "channels FLOPs 0.5, global budget": {"flops": 0.5, "budget": "global"},
    "sparsity 0.8": {"method": "sparsity", "sparsity": 0.8},
    "sparsity 0.8, magnitude": {"method": "sparsity", "sparsity": 0.8, "solver": "magnitude"},
    "quant 3 bits": {"method": "quant", "bits": 3},
    "quant 3 bits, round to nearest": {"method": "quant", "bits": 3, "solver": "rtn"},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=FMNIST if Path(FMNIST).is_dir() else "fashion-mnist")
    p.add_argument("--teacher", type=Path, default=None, help="teacher state dict (trained and saved when missing)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threshold", type=int, default=25, help="pixels above it (0-255) are the garment")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--test", type=int, default=10000, help="score on the first N test images")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="ROW")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous)  # a caller's (a test's) setting comes back


def _run(args: argparse.Namespace) -> int:
    import crossdistill
    from crossdistill.compression.coverage import CompressionWarning
    from crossdistill.data import load_image_data
    from crossdistill.evaluation_agreement import scores
    from crossdistill.paths import cache_dir

    train_data, test_data = load_image_data(args.data, "train"), load_image_data(args.data, "test")
    n_train = args.train_limit or len(train_data)
    x, maps = inputs_and_maps(train_data.x[:n_train], train_data.y[:n_train], args.threshold)
    y = torch.as_tensor(train_data.y[:n_train]).long()
    xt, mt = inputs_and_maps(test_data.x[: args.test], test_data.y[: args.test], args.threshold)
    teacher = unet(args.width)
    path = args.teacher or cache_dir() / "teachers" / (f"unet_w{args.width}_fmnist_seg_t{args.threshold}_{n_train}"
                                                        f"_e{args.epochs}.pt")
    if path.is_file():
        teacher.load_state_dict(torch.load(path, weights_only=True))
        teacher.eval()
    else:
        start = time.perf_counter()
        train(teacher, x, maps, args.epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        torch.save(teacher.state_dict(), tmp)
        tmp.replace(path)  # never a half-written teacher under the final name
        print(f"  trained in {time.perf_counter() - start:.0f} s, saved to {path}")
    params = sum(q.numel() for q in teacher.parameters())
    t = scores(teacher, xt, mt, kind="dense")
    print(f"U-Net width {args.width} ({params:,} parameters) trained {args.epochs} epochs on {n_train} Fashion-MNIST "
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
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CompressionWarning)
                    student, _ = crossdistill.compress(teacher, x, labels=y, shots=k, seed=seed,
                                                       show_progress=False, **ROWS[label])
                seconds = time.perf_counter() - start
                size = sum(q.numel() for q in student.parameters())
                s = scores(student, xt, mt, kind="dense")
                top.append(s["top1"])
                miou.append(s["miou"])
            for vals in (top, miou):
                spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.2f} ± {spread:.2f}")
        print(f"| {label} | " + " | ".join(cells) + f" | {size:,} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
