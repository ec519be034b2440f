"""Seconds per stage and peak memory of one compression of a large network, in one process or
several (torchrun, gloo), through the CLI (issues 16 and 17). Prints a table; no pass/fail:
the figures go into docs/results/scale.md with the machine's load.

    python benchmarks/scale_network.py --model examples/resnet50.py:resnet50 --images 512 --size 224 \\
        --processes 1 2 --capture disk
    python benchmarks/scale_network.py --model resnet20 --images 16 --size 32 --processes 1   # seconds

The teacher has random weights (torch.manual_seed(0), BatchNorm statistics drawn once) and the
images are random uint8 pixels (numpy seed 0), written once to a temporary folder; every run
compresses the same teacher from the same images (default: channel pruning at keep 0.5, closed
form, one thread per process, on the CPU; --sparsity, --solver, --threads and --device change
that: `--device cpu cuda` gives a row per device).
Stages, from report.json: capture + moments (each layer's seconds less its solve), solves, and the
rest of the compression (planning, slimming); peak memory is the process's peak resident set
(rank 0's under torchrun).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def teacher(model: str) -> torch.nn.Module:
    from crossdistill.models import create_model, list_models
    from crossdistill.models.user import build_user_model

    torch.manual_seed(0)
    net = create_model(model) if model in list_models() else build_user_model(model)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    return net.eval()


def run(folder: Path, model: str, processes: int, capture: str, method: list[str], batch: int,
        threads: int, device: str = "cpu") -> dict:
    out = folder / f"run-{processes}-{capture}-{device}"
    args = ["compress", "--model", model, "--weights", str(folder / "teacher.pt"), "--data", str(folder / "images.npz"),
            "--n-samples", str(np.load(folder / "images.npz")["y"].shape[0]), *method, "--damping", "0.01",
            "--capture", capture, "--batch-size", str(batch), "--threads", str(threads), "--quiet", "--out", str(out),
            "--force", "--device", device]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        cmd = [sys.executable, "-m", "crossdistill.cli.main", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "crossdistill.cli.main", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed:\n{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    layers = report["layers"]
    solves = sum(layer.get("solve_seconds", 0.0) for layer in layers)
    captured = sum(layer["seconds"] for layer in layers) - solves
    return {"compress": report["compress_seconds"], "capture": captured, "solves": solves,
            "other": report["compress_seconds"] - captured - solves, "peak": report["peak_memory_mib"],
            "processes": report.get("processes", 1), "gpu_peak": report.get("gpu_peak_memory_mib")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="examples/resnet50.py:resnet50",
                        help="registered name or path/to/file.py:factory")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--capture", nargs="+", default=["all"], choices=["all", "stream", "disk"])
    parser.add_argument("--keep", type=float, default=0.5, help="channel pruning: share of channels kept")
    parser.add_argument("--sparsity", type=float, default=None, help="weight sparsity instead of channel pruning")
    parser.add_argument("--solver", default=None, help="e.g. sparsegpt (default: the method's closed form)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", nargs="+", default=["cpu"], help="cpu, cuda, cuda:N: one row each")
    args = parser.parse_args(argv)
    method = (["--method", "sparsity", "--sparsity", str(args.sparsity)] if args.sparsity is not None
              else ["--keep", str(args.keep)])
    if args.solver:
        method += ["--solver", args.solver]
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        folder = Path(tmp)
        net = teacher(args.model)
        torch.save(net.state_dict(), folder / "teacher.pt")
        with torch.no_grad():
            classes = int(net(torch.zeros(1, 3, args.size, args.size)).shape[1])
        rng = np.random.default_rng(0)
        np.savez(folder / "images.npz", x=rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8),
                 y=rng.integers(0, classes, args.images))
        print(f"{args.model}, {args.images} random images at {args.size}x{args.size}, {' '.join(method)}, "
              f"{args.threads} thread(s) per process, batch {args.batch_size}")
        print("| device | processes | capture | compress s | capture + moments s | solves s | other s | peak MiB "
              "| GPU peak MiB |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for device in args.device:
            for capture in args.capture:
                for p in args.processes:
                    r = run(folder, args.model, p, capture, method, args.batch_size, args.threads, device)
                    gpu = "–" if r["gpu_peak"] is None else f"{r['gpu_peak']:.0f}"
                    print(f"| {device} | {r['processes']} | {capture} | {r['compress']:.1f} | {r['capture']:.1f} | "
                          f"{r['solves']:.1f} | {r['other']:.1f} | {r['peak']:.0f} | {gpu} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
