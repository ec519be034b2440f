"""Peak memory and seconds of one compression under each capture mode (issue 17, item 3), for
a growing calibration set. Each run is a fresh process, so its peak resident set is its own.
Prints a table; no pass/fail.

    python benchmarks/capture_memory.py --model resnet18 --size 224 --images 64 256 --captures all stream disk
    python benchmarks/capture_memory.py --model resnet20 --size 32 --images 16 --captures all disk   # seconds

The model is the registered architecture with random weights (torch.manual_seed(0)) and
BatchNorm statistics drawn once; the images are random normal tensors (seed 1): the figures
are about memory and time, not accuracy. Channel pruning, keep 0.5, closed form, one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
from crossdistill.config import CompressConfig
from crossdistill.models import create_model
from crossdistill.pipeline import FewShot, compress
model, size, n, capture, batch, spill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
teacher = create_model(model).eval()
with torch.no_grad():
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5); m.running_mean.normal_(0, 0.1)
x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))
few = FewShot(images=x, labels=torch.arange(n) % 10, indices=torch.arange(n).numpy())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
cfg = CompressConfig(model=model, n_samples=n, keep=0.5, capture=capture, capture_dir=spill, batch_size=batch, damping=0.01)
start, cpu = time.perf_counter(), time.process_time()
compress(teacher, few, cfg, show_progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_mib": before}))
"""


def run(model: str, size: int, n: int, capture: str, batch: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="capture-bench-") as spill:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", CHILD, model, str(size), str(n), capture, str(batch), spill],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{model} {n} {capture} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--images", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--captures", nargs="+", default=["all", "stream", "disk"], choices=["all", "stream", "disk"])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    print(f"{args.model} at {args.size}x{args.size}, keep 0.5, one thread, batch {args.batch_size}")
    print("| images | capture | seconds | CPU s | peak MiB (images + model before: MiB) |")
    print("|---:|---|---:|---:|---:|")
    for n in args.images:
        for capture in args.captures:
            r = run(args.model, args.size, n, capture, args.batch_size)
            print(f"| {n} | {capture} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_mib']:.0f} ({r['before_mib']:.0f}) |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
