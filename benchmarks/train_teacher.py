"""Train the CIFAR-10 VGG-16 teacher of issue 19 (the registry's `vgg16`: 13 conv-BN-ReLU, one
Linear head), on a GPU in a few minutes; seeded, logged, saved as fp16 safetensors.

    python benchmarks/train_teacher.py --data $CROSSDISTILL_DATA/cifar10/cifar10_train.npz \\
        --test $CROSSDISTILL_DATA/cifar10/cifar10_test1000.npz --device cuda \\
        --out benchmarks/teachers/vgg16_cifar10.safetensors
    python benchmarks/train_teacher.py --data train.npz --limit 256 --epochs 1 --device cpu --out /tmp/t.safetensors  # smoke

Recipe: the whole train set held on the device as uint8, standard augmentation drawn on the
device each step (random crop of the 4-padded image, horizontal flip), SGD with Nesterov
momentum 0.9 and weight decay 5e-4 (not on BatchNorm or biases), one-cycle learning rate (linear
warm-up over the first 15 % of steps to --lr, then cosine to zero), bfloat16 autocast on CUDA,
channels-last. Every `--eval-every` epochs and at the end, top-1 on --test. The weights are
saved in float16 (about 29 MB), with the model name and spec as metadata, so that
`crossdistill evaluate --model vgg16 --weights FILE` reads them; the log (JSON lines: epoch,
loss, lr, seconds, test top-1) goes beside the file, and the sha256 is printed.

--data may name several .npz files (x: N×32×32×3 uint8, y: N labels), concatenated in order,
each optionally compressed as .npz.xz: the training set can then travel in parts smaller than a
transfer limit.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_arrays(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in paths:
        try:
            raw = lzma.decompress(Path(p).read_bytes()) if p.endswith(".xz") else Path(p).read_bytes()
            with np.load(io.BytesIO(raw), allow_pickle=False) as d:
                xs.append(d["x"])
                ys.append(d["y"])
        except (OSError, lzma.LZMAError, ValueError, KeyError) as exc:
            raise SystemExit(f"{p}: not a readable .npz (or .npz.xz) with arrays x and y: {exc}") from None
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y):
        raise SystemExit(f"expected x: N×32×32×3 uint8 and N labels, got {x.shape} {x.dtype} and {y.shape}")
    return x, y


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×C on the device → normalised float N×C×H×W (channels-last memory)."""
    t = x.permute(0, 3, 1, 2).float().div_(255.0)
    return ((t - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32×32 crop of the zero-padded (4) image and a horizontal flip, per image, on x's device."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen, device=gen.device)
    dx = torch.randint(0, 9, (n,), generator=gen, device=gen.device)
    rows = (dy[:, None] + torch.arange(32, device=x.device)[None, :])  # (n, 32)
    cols = (dx[:, None] + torch.arange(32, device=x.device)[None, :])
    flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (n, 32, 32, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def one_cycle(step: int, total: int, peak: float, warm: float = 0.15) -> float:
    w = max(1, int(total * warm))
    if step < w:
        return peak * (step + 1) / w
    return 0.5 * peak * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
         autocast: bool) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1000):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model(normalise(x[i : i + 1000], mean, std))
        correct += int((logits.argmax(1) == y[i : i + 1000]).sum())
    return 100.0 * correct / len(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True, help=".npz (or .npz.xz) files of the training set")
    parser.add_argument("--test", default=None, help=".npz of the test images (top-1 in the log)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--wd", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only (smoke tests)")
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, args.eval_every) < 1 or args.lr <= 0 or args.wd < 0:
        parser.error("--epochs, --batch-size and --eval-every must be >= 1, --lr > 0, --wd >= 0")
    if not args.out.endswith(".safetensors"):
        parser.error(f"--out must name a .safetensors file, got {args.out}")

    from crossdistill.models import create_model, model_info

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x_np, y_np = read_arrays(args.data)
    if args.limit is not None:
        x_np, y_np = x_np[: args.limit], y_np[: args.limit]
    info = model_info("vgg16")
    mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)
    x = torch.from_numpy(x_np).to(device)
    y = torch.from_numpy(y_np).to(device)
    test = None
    if args.test:
        tx, ty = read_arrays([args.test])
        test = (torch.from_numpy(tx).to(device), torch.from_numpy(ty).to(device))

    model = create_model("vgg16").to(device).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    autocast = device.type == "cuda"
    n = len(x)
    steps_per_epoch = n // args.batch_size if n >= args.batch_size else 1
    total = args.epochs * steps_per_epoch
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log.jsonl")
    # Written under temporary names, renamed at the end: a failed run leaves no file that looks done.
    partial_log = log_path.with_name(log_path.name + ".partial")
    log = partial_log.open("w")
    start = time.perf_counter()
    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            lr = one_cycle(step, total, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                logits = model(augment(normalise(x[idx], mean, std), gen))
                loss = F.cross_entropy(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            step += 1
        entry = {"epoch": epoch, "loss": float(loss_sum) / steps_per_epoch, "lr": lr,
                 "seconds": round(time.perf_counter() - start, 2)}
        if test is not None and (epoch % args.eval_every == 0 or epoch == args.epochs):
            entry["test_top1"] = top1(model, *test, mean, std, autocast)
            entry["n_test"] = len(test[1])
        log.write(json.dumps(entry) + "\n")
        log.flush()
        print(json.dumps(entry), flush=True)
    log.close()

    from safetensors.torch import save_file

    model.eval()
    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in model.state_dict().items()}
    meta = {"crossdistill_model": "vgg16", "crossdistill_spec": json.dumps(model.spec()),
            "training": json.dumps({k: v for k, v in vars(args).items() if k not in ("data", "test", "out")})}
    partial = out.with_name(out.name + ".partial")
    save_file(state, str(partial), metadata=meta)
    partial.replace(out)
    partial_log.replace(log_path)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), sha256 {digest}; log {log_path}", flush=True)
    if test is not None:
        # The fp16 copy is what ships: score it, not the float32 weights it came from.
        check = create_model("vgg16").to(device).to(memory_format=torch.channels_last)
        check.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        print(f"fp16 weights: top-1 {top1(check, *test, mean, std, autocast):.2f} % on {len(test[1])} test images",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
