"""One process of the torchrun tests in test_distributed.py (not a test module itself).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py MODE ...

MODE cli ARGS...       crossdistill's command line in this process
MODE fail RANK ARGS... the same, with layer capture failing on rank RANK at the second layer
MODE missing RANK ARGS... the same, with rank RANK given a weights file that is not there
MODE api FACTORY OUT   crossdistill.compress from Python inside an initialised process group;
                       each rank saves its student's state to OUT/rank<r>.pt
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist


def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    from crossdistill.cli.main import main as cli

    if mode == "cli":
        return cli(rest)
    if mode == "fail":
        bad_rank, rest = int(rest[0]), rest[1:]
        from crossdistill.moments import MomentAccumulator
        from crossdistill.problem_moments import ProblemAccumulator

        if int(__import__("os").environ["RANK"]) == bad_rank:
            seen: set[int] = set()
            # Both accumulators: which one a layer uses depends on the objective.
            for cls in (MomentAccumulator, ProblemAccumulator):
                def add(self, xt, xs, _original=cls.add):
                    seen.add(id(self))
                    if len(seen) >= 2:
                        raise RuntimeError("injected failure while capturing")
                    return _original(self, xt, xs)

                cls.add = add
        return cli(rest)
    if mode == "missing":
        bad_rank, rest = int(rest[0]), rest[1:]
        if int(__import__("os").environ["RANK"]) == bad_rank:
            rest = [*rest, "--weights", "/nonexistent/teacher.pt"]  # a file not mounted on one node
        return cli(rest)
    if mode == "api":
        import crossdistill
        from crossdistill.models.user import build_user_model

        factory, out = rest
        dist.init_process_group("gloo")
        gen = torch.Generator().manual_seed(0)
        images, labels = torch.randn(48, 1, 28, 28, generator=gen), torch.arange(48) % 10
        student, report = crossdistill.compress(build_user_model(factory), images, labels=labels, shots=4,
                                                method="channels", keep=0.5, show_progress=False)
        torch.save({k: v.detach().clone() for k, v in student.state_dict().items()},
                   f"{out}/rank{dist.get_rank()}.pt")
        dist.destroy_process_group()
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
