"""The fine-tune inside a compression run shows its progress, without changing what it trains."""
from __future__ import annotations

import torch

from crossdistill.config import CompressConfig
from crossdistill.pipeline import compress
from test_graph_channels import build
from test_graph_pruning import fewshot_for



def test_the_fine_tune_shows_its_steps_and_the_bar_changes_nothing(capsys, monkeypatch):
    import crossdistill.progress as progress

    monkeypatch.setattr(progress, "PROGRESS_DELAY", 0)  # bars of phases this short appear at once
    teacher, example = build("resnet")
    few = fewshot_for(example, n=6)
    cfg = CompressConfig(model="user-resnet", n_samples=6, damping=0.01, keep=0.5, finetune_epochs=3,
                         finetune_batch_size=4, finetune_lr=1e-3)
    quiet = compress(teacher, few, cfg, show_progress=False)
    capsys.readouterr()
    shown = compress(teacher, few, cfg, show_progress=True)
    err = capsys.readouterr().err
    assert "fine-tune" in err and "6/6" in err  # 3 epochs × 2 steps, on a bar of its own, to its end
    assert shown.finetune["steps"] == 6
    for k, v in quiet.student.state_dict().items():
        assert torch.equal(v, shown.student.state_dict()[k]), k
