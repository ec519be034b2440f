"""How much of a transformer sparsity and quantization reach, now that an attention's packed q/k/v
projections are layers (docs/any_model.md). Prints a table; no pass/fail.

    python benchmarks/attention_coverage.py                      # the ViT of examples/vit.py
    python benchmarks/attention_coverage.py --depth 1 --dim 24   # a toy

The model is examples/vit.py's ViT with random weights (torch.manual_seed(0)); the images are
random normal 32×32 tensors (seed 1) with labels i mod 10, K per class: the figures are about
coverage and time, not accuracy. Per method: seconds of crossdistill.compress (default objective
and solver), the fraction of zeros over every weight matrix (patch conv, linears and the packed
q/k/v), the share of q/k/v entries among those weights, the stored size, and the relative error
of the student's logits against the teacher's on the calibration images.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def vit(depth: int, dim: int, heads: int) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("example_vit", EXAMPLES / "vit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    torch.manual_seed(0)
    return module.ViT(depth=depth, dim=dim, heads=heads).eval()


def weight_matrices(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight matrix a method may compress: conv/linear weights and in_proj_weight."""
    return {n: p.detach() for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"}


def main(argv: list[str] | None = None) -> int:
    import crossdistill
    from crossdistill.compression.coverage import CompressionWarning
    from crossdistill.compression.quantization import model_size_bytes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--shots", type=int, default=10, help="K images per class (10 classes)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher = vit(args.depth, args.dim, args.heads)
    n = 10 * args.shots
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 10
    weights = weight_matrices(teacher)
    total = sum(w.numel() for w in weights.values())
    qkv = sum(w.numel() for k, w in weights.items() if k.endswith("in_proj_weight"))
    print(f"ViT depth {args.depth}, width {args.dim}, {args.heads} heads: {total:,} weight-matrix entries, "
          f"{qkv / total:.1%} of them in the attentions' packed q/k/v; {n} images, K={args.shots}, "
          f"{args.threads} threads")
    print("| method | seconds | zeros over all weight matrices | stored size (MiB) | rel. logit error |")
    print("|---|---|---|---|---|")
    size0 = model_size_bytes(teacher)["total"] / 2**20
    print(f"| teacher | – | {sum(int((w == 0).sum()) for w in weights.values()) / total:.3f} | {size0:.3g} | – |")
    with torch.inference_mode():
        ref = teacher(x)
    for label, settings in ((f"sparsity {args.sparsity}", {"method": "sparsity", "sparsity": args.sparsity}),
                            (f"quant {args.bits} bits", {"method": "quant", "bits": args.bits})):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompressionWarning)
            student, _ = crossdistill.compress(teacher, x, labels=y, shots=args.shots, show_progress=False, **settings)
        seconds = time.perf_counter() - start
        sw = weight_matrices(student)
        zeros = sum(int((w == 0).sum()) for w in sw.values()) / total
        with torch.inference_mode():
            err = float((student(x) - ref).norm() / ref.norm())
        print(f"| {label} | {seconds:.1f} | {zeros:.3f} | {model_size_bytes(student)['total'] / 2**20:.3g} | {err:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
