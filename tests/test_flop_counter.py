"""FLOPs counting sees every matmul: inside a fused transformer layer (whose fast path a frozen
or no-grad eval model takes) and the attention products of the CPU attention kernel."""
from __future__ import annotations

import torch
from torch import nn

from crossdistill.evaluation_counts import count_flops


class Attention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


class Encoder(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 40) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(dim, 2, hidden, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)


def attention_flops(tokens: int, dim: int) -> int:
    projections = 4 * 2 * tokens * dim * dim  # q, k, v, out
    return projections + 2 * 2 * tokens * tokens * dim  # Q K^T and (scores) V, over all heads


def test_attention_products_count():
    assert count_flops(Attention().eval(), (7, 16)) == attention_flops(7, 16)


def test_a_frozen_transformer_layer_counts_its_linears():
    model = Encoder().eval()
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen model takes the fused fast path even with grad enabled
    expected = attention_flops(7, 16) + 2 * 2 * 7 * 16 * 40  # + linear1 and linear2
    assert count_flops(model, (7, 16)) == expected
    assert torch.backends.mha.get_fastpath_enabled()  # the switch is put back


def test_counting_flops_does_not_import_dynamo_and_counts_as_torch_does():
    """torch's counter imported torch._dynamo on its first op (3-4 s of a CPU run); the count
    without that guard must be torch's own."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from torch.utils.flop_counter import FlopCounterMode\n"
            "from crossdistill.models import create_model\n"
            "from crossdistill.evaluation_counts import count_flops\n"
            "m = create_model('resnet20').eval()\n"
            "ours = count_flops(m, (3, 32, 32))\n"
            "print('torch._dynamo' in sys.modules)\n"
            "with FlopCounterMode(display=False) as c, torch.no_grad():\n"
            "    m(torch.zeros(1, 3, 32, 32))\n"
            "print(ours == c.get_total_flops(), ours)\n"
            "print(count_flops(m, (3, 32, 32)) == ours)\n")  # with dynamo imported now: torch's own mode
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["False", "True"] and int(out[2]) > 0 and out[3] == "True"
