"""The toy figures docs/any_model.md quotes for kinds of user model: a text CNN and a one-block
encoder on token ids, a model of two inputs through `StackedInputs` (a masked-mean text model;
all three trained here on a keyword task) and a GroupNorm net (random weights), each compressed
at keep 0.5 and compared with pruning alone. The models are those of tests/test_token_models.py,
tests/test_stacked_inputs.py and tests/test_graph_pruning.py; the model seed varies. Prints a
table; no pass/fail.

    python benchmarks/toy_wrappers.py            # model seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import crossdistill  # noqa: E402
from crossdistill import StackedInputs  # noqa: E402


def stacked_rows(seed: int) -> tuple[str, ...]:
    from test_stacked_inputs import _sentences, _trained

    torch.manual_seed(seed)
    teacher = _trained()
    ids, mask, y = _sentences(200, 1)
    t_ids, t_mask, t_y = _sentences(300, 2)
    train, test = StackedInputs.stack(ids, mask), StackedInputs.stack(t_ids, t_mask)
    runs = {solver: crossdistill.compress(teacher, train, labels=y, shots=5, keep=0.5, solver=solver,
                                          eval_data=(test, t_y), show_progress=False)[1]
            for solver in ("closed-form", "prune-only")}
    return ("StackedInputs text model, 300 test sentences, K=5", f"{seed}",
            f"{runs['closed-form']['teacher']['top1']:.1f}",
            *(f"{r['student']['top1']:.1f} / {r['agreement']['output_error']:.4f}" for r in runs.values()))


def text_rows(seed: int) -> list[tuple[str, ...]]:
    from test_token_models import TextCNN, TextEncoder, _sentences, _trained

    out = []
    for make in (TextCNN, TextEncoder):
        torch.manual_seed(seed)
        teacher = _trained(make())
        train, labels = _sentences(200, 1)
        test, test_labels = _sentences(200, 2)
        runs = {solver: crossdistill.compress(teacher, train, labels=labels, shots=5, keep=0.5, solver=solver,
                                              eval_data=(test, test_labels), show_progress=False)[1]
                for solver in ("closed-form", "prune-only")}
        out.append((f"{make.__name__} on token ids, 200 test sentences, K=5", f"{seed}",
                    f"{runs['closed-form']['teacher']['top1']:.1f}",
                    *(f"{r['student']['top1']:.1f} / {r['agreement']['output_error']:.4f}" for r in runs.values())))
    return out


def groupnorm_rows(seed: int) -> tuple[str, ...]:
    from test_graph_pruning import GroupNormNet

    torch.manual_seed(seed)
    teacher = GroupNormNet().eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    runs = {solver: crossdistill.compress(teacher, x, n_samples=32, keep=0.5, prune_classifier=True, solver=solver,
                                          eval_data=x[32:], show_progress=False)[1]
            for solver in ("closed-form", "prune-only")}
    return ("GroupNorm net, 32 test inputs, N=32", f"{seed}", "–",
            *(f"– / {r['agreement']['output_error']:.4f}" for r in runs.values()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| model | seed | teacher top-1 % | re-solved: top-1 % / output error | prune-only: top-1 % / output error |")
    print("|---|---|---|---|---|")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left whole are named in warnings
        for seed in args.seeds:
            for row in text_rows(seed):
                print("| " + " | ".join(row) + " |")
        for rows in (stacked_rows, groupnorm_rows):
            for seed in args.seeds:
                print("| " + " | ".join(rows(seed)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
