"""`crossdistill compress`: one compression run, written atomically to --out."""
from __future__ import annotations

import argparse
from pathlib import Path

from crossdistill.compression import METHODS
from crossdistill.config import load_yaml, resolve
from crossdistill.finetune import AUGMENT_POLICIES
from crossdistill.objectives import OBJECTIVES
from crossdistill.outputs import atomic_output_dir, check_output_dir
from crossdistill.solvers.selection import SELECTORS

# Every option defaults to None so that only flags actually given override the YAML config.
OPTION_KEYS = [
    "model", "weights", "data", "eval_data", "shots", "n_samples", "seed", "sampler", "prune", "keep",
    "objective", "mu", "alpha", "beta", "solver", "selection", "damping", "iters", "lr", "batch_size",
    "bits", "quant_scheme", "quant_solver", "rank_ratio", "flops_ratio",
    "sparsity", "finetune_epochs", "finetune_lr", "finetune_bn", "finetune_temperature", "finetune_kd_weight",
    "finetune_mode", "finetune_hint_weight", "finetune_hints", "finetune_logit_weight", "finetune_schedule", "finetune_mixup", "finetune_cutmix",
    "finetune_views", "finetune_ema", "device",
]


def add_config_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs a compression."""
    g = p.add_argument_group("model and data")
    g.add_argument("--config", type=Path, help="YAML file of defaults; flags given here override it")
    g.add_argument("--model", help="registered model name (see `crossdistill models`), default resnet56")
    g.add_argument("--weights", help="teacher checkpoint (.th/.pt/.pth read with weights_only, or .safetensors)")
    g.add_argument("--data", help="training data: .npz, cifar-10-batches-py folder, Fashion-MNIST folder, or 'cifar10'/'fashion-mnist'")
    g.add_argument("--eval-data", dest="eval_data", help="test data (same formats); omit to skip evaluation")
    g = p.add_argument_group("few-shot draw")
    g.add_argument("--shots", type=int, help="K samples per class (default 5)")
    g.add_argument("--n-samples", dest="n_samples", type=int, help="N random samples instead of K per class")
    g.add_argument("--seed", type=int, help="seed of the few-shot draw (default 0)")
    g.add_argument("--sampler", choices=["random", "first"], help="'first' takes the first K of each class, as the paper's code")
    g = p.add_argument_group("compression")
    g.add_argument("--prune", choices=sorted(METHODS), help="compression method (default channels)")
    g.add_argument("--keep", help="ratio of input channels kept in each pruned layer, in (0, 1], or 'paper' (ResNet-56 preset); default 0.5")
    g.add_argument("--sparsity", type=float, help="--prune sparsity: fraction of zero weights in every conv but the first, in [0, 1); default 0.9")
    g.add_argument("--bits", type=int, help="--prune quant / channels+quant / lowrank+quant: weight bits, 2 to 8 (default 4)")
    g.add_argument("--quant-scheme", dest="quant_scheme", choices=["symmetric", "asymmetric"],
                   help="per-output-channel grid: symmetric (zero point 0) or asymmetric (default)")
    g.add_argument("--quant-solver", dest="quant_solver",
                   help="solver of the quantization stage: gptq (default) | rtn (round to nearest)")
    g.add_argument("--rank-ratio", dest="rank_ratio", type=float,
                   help="--prune lowrank: rank = ratio · min(out, in·k²) per layer, in (0, 1] (default 0.5)")
    g.add_argument("--flops-ratio", dest="flops_ratio", type=float,
                   help="--prune lowrank: instead of --rank-ratio, keep at most this share of each layer's FLOPs, in (0, 1)")
    g = p.add_argument_group("cross distillation")
    g.add_argument("--objective", choices=sorted(OBJECTIVES), help="layer loss (default soft with alpha 0, beta 0.3)")
    g.add_argument("--mu", type=float, help="weight of correction in the mixed loss (default: 0.9 ResNet, 0.6 VGG)")
    g.add_argument("--alpha", type=float, help="soft: share of the student's input in the teacher's (default 0)")
    g.add_argument("--beta", type=float, help="soft: share of the teacher's input in the student's (default 0.3)")
    g.add_argument("--solver", help="closed-form | paper | prune-only for channels; closed-form | sparsegpt | paper | magnitude for sparsity (default closed-form); gptq | rtn for quant (default gptq); svd | svd-plain for lowrank (default svd)")
    g.add_argument("--selection", choices=sorted(SELECTORS), help="channel selection of the closed form (default obs)")
    g.add_argument("--damping", type=float, help="ridge towards the teacher, × mean diag of H (default: 0.1/K, K = images per class)")
    g.add_argument("--iters", type=int, help="iterations of the paper solver (default 3000)")
    g.add_argument("--lr", type=float, help="Adam learning rate of the paper solver (default 1e-3)")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="images per forward pass while capturing (default 64)")
    g = p.add_argument_group("few-shot fine-tune after distillation (off unless --finetune-epochs > 0)")
    g.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, help="passes over the few-shot images (default 0 = off)")
    g.add_argument("--finetune-lr", dest="finetune_lr", type=float, help="Adam learning rate (default 1e-4)")
    g.add_argument("--finetune-bn", dest="finetune_bn", choices=["auto", "frozen", "recalibrate", "train"],
                   help="BatchNorm: keep the running stats (frozen), re-estimate them on the few images (recalibrate; "
                        "with --finetune-epochs 0 only this is done), train with batch stats, or auto (default): "
                        "recalibrate only if that cuts the distillation loss on the few images by a quarter")
    g.add_argument("--finetune-temperature", dest="finetune_temperature", type=float, help="temperature of the logit distillation (default 4)")
    g.add_argument("--finetune-kd-weight", dest="finetune_kd_weight", type=float,
                   help="share of the distillation loss; the rest is cross-entropy on the few labels (default 1)")
    g.add_argument("--finetune-mode", dest="finetune_mode", choices=["kd", "hints"],
                   help="kd (default): distil the teacher's logits; hints: match the teacher's outputs at every pruned "
                        "layer instead, end to end (FitNet-style, from the cross-distilled student; about +6 points at "
                        "K=1 with --finetune-epochs 300 --finetune-lr 1e-3, docs/results/accuracy_push.md)")
    g.add_argument("--finetune-hint-weight", dest="finetune_hint_weight", type=float,
                   help="--finetune-mode hints: weight of the feature-hint loss (default 1; matters only next to a "
                        "--finetune-logit-weight > 0)")
    g.add_argument("--finetune-hints", dest="finetune_hints",
                   choices=["layers", "blocks", "penultimate", "layers+penultimate", "blocks+penultimate"],
                   help="--finetune-mode hints: where to match the teacher: the pruned layers' outputs (layers, default), "
                        "the outputs of the blocks holding them, and/or the features before the classifier (penultimate)")
    g.add_argument("--finetune-logit-weight", dest="finetune_logit_weight", type=float,
                   help="weight of the logit loss (distillation + cross-entropy); default 1 with --finetune-mode kd, "
                        "0 (feature hints only) with --finetune-mode hints")
    g.add_argument("--finetune-schedule", dest="finetune_schedule", choices=["constant", "cosine"],
                   help="learning rate over the fine-tune: constant (default) or cosine decay to 0")
    g.add_argument("--finetune-mixup", dest="finetune_mixup", type=float,
                   help="> 0: train also on mixup blends of the few images, λ ~ Beta(a, a), labelled by the teacher (default 0)")
    g.add_argument("--finetune-cutmix", dest="finetune_cutmix", type=float,
                   help="> 0: train also on CutMix pastes of the few images, labelled by the teacher (default 0; "
                        "with --finetune-mixup, one of the two per batch)")
    g.add_argument("--finetune-views", dest="finetune_views", choices=list(AUGMENT_POLICIES),
                   help="random views of the few images, the teacher labelling the same view: crop-flip (default; "
                        "pad-4 crop and flip) or affine (zoom up to 1.35x, rotation within 15 degrees, shift, flip, "
                        "light contrast/brightness jitter)")
    g.add_argument("--finetune-ema", dest="finetune_ema", type=float,
                   help="> 0: return the exponential moving average of the weights instead of the last "
                        "step's; the decay at step t is min(this, (1+t)/(10+t)), so runs shorter than "
                        "(10*this-1)/(1-this) steps (4490 for 0.998) average about their last t/9 steps "
                        "whatever the value (default 0 = off)")
    g = p.add_argument_group("device")
    g.add_argument("--device", help="where the training steps run (the fine-tune and the training baselines bp, "
                   "l1-finetune, fitnet): cpu, cuda, cuda:N, or auto (CUDA when present); the layer-wise solves "
                   "always run on the CPU in float64 (default cpu)")


def config_from_args(args: argparse.Namespace):
    from crossdistill.sweep import expand_vars  # ${CROSSDISTILL_DATA} works in every config file

    defaults = expand_vars(load_yaml(args.config)) if getattr(args, "config", None) else {}
    overrides = {k: getattr(args, k, None) for k in OPTION_KEYS}
    if getattr(args, "no_latency", False):
        overrides["latency"] = False
    return resolve(defaults, overrides)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a teacher from a few samples per class",
        description="Layer-wise cross distillation of a pretrained model from K samples per class. "
        "Writes the student (safetensors + spec), report.json, the few-shot indices and the resolved config to --out.",
    )
    add_config_options(p)
    p.add_argument("--out", type=Path, required=True, help="output directory (created atomically)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-latency", dest="no_latency", action="store_true", help="skip CPU latency measurement")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdistill.pipeline import format_summary, run as run_pipeline, write_run

    cfg = config_from_args(args)
    check_output_dir(args.out, args.force)  # fail before the work, not after
    result, report = run_pipeline(cfg, show_progress=not args.quiet)
    with atomic_output_dir(args.out, args.force) as tmp:
        write_run(tmp, result, report)
    print(format_summary(report))
    print(f"written to {args.out}")
    return 0
