"""A small Vision Transformer for 32×32 images (Dosovitskiy et al. 2021, scaled down): 4×4 patches
embedded by a stride-4 conv, a learned position embedding, six pre-norm encoder blocks of width
192 with three heads (torch's nn.TransformerEncoderLayer, GELU MLP of width 768), mean pooling
over the 64 tokens, a linear head. An example of a transformer the registry does not know: its
attention keeps q/k/v packed in one `in_proj_weight`, which sparsity, quantization and low rank
reach as the layers `blocks.N.self_attn.q_proj`, `.k_proj`, `.v_proj` (docs/any_model.md). No
pretrained weights come with it: pass your own state dict with --weights.

    crossdistill compress --model examples/vit.py:vit_tiny --weights my_vit.pt \\
        --mean 0.4914 0.4822 0.4465 --std 0.2470 0.2435 0.2616 --data train.npz --shots 10 \\
        --method sparsity --sparsity 0.5 --out runs/vit
"""
from __future__ import annotations

import torch
from torch import nn


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, image: int = 32, patch: int = 4, dim: int = 192, depth: int = 6,
                 heads: int = 3, mlp: int = 4, channels: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, mlp * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens).mean(1))


def vit_tiny(num_classes: int = 10) -> ViT:
    return ViT(num_classes)
