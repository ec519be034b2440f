"""A small Vision Transformer for 32×32 images (Dosovitskiy et al. 2021, scaled down): 4×4 patches
embedded by a stride-4 conv, a learned position embedding, six pre-norm encoder blocks of width
192 with three heads (torch's nn.TransformerEncoderLayer, GELU MLP of width 768), mean pooling
over the 64 tokens, a linear head. An example of a transformer the registry does not know: its
attention keeps q/k/v packed in one `in_proj_weight`, which sparsity, quantization and low rank
reach as the layers `blocks.N.self_attn.q_proj`, `.k_proj`, `.v_proj` (docs/any_model.md). No
pretrained weights come with it: pass your own state dict with --weights.

`vit_tiny_hand` is the same network with its attention written by hand as timm writes it (one
`qkv` Linear reshaped into heads, a `proj` Linear), under the same state-dict keys but for
`self_attn.qkv` (torch's `in_proj_weight`/`in_proj_bias`) and `self_attn.proj` (`out_proj`):
`hand_state(torch_state)` converts a state dict, and both compute the same function.

    crossdistill compress --model examples/vit.py:vit_tiny --weights my_vit.pt \\
        --mean 0.4914 0.4822 0.4465 --std 0.2470 0.2435 0.2616 --data train.npz --shots 10 \\
        --method sparsity --sparsity 0.5 --out runs/vit
"""
from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention written by hand (timm's layout: rows of `qkv` are q | k | v)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """A pre-norm encoder block as torch's TransformerEncoderLayer(norm_first=True), GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        return x + self.linear2(torch.nn.functional.gelu(self.linear1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, image: int = 32, patch: int = 4, dim: int = 192, depth: int = 6,
                 heads: int = 3, mlp: int = 4, channels: int = 3, hand: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp * dim) if hand else
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


def vit_tiny_hand(num_classes: int = 10) -> ViT:
    return ViT(num_classes, hand=True)


def hand_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of the torch-attention ViT under the hand-written ViT's keys."""
    renames = {"self_attn.in_proj_": "self_attn.qkv.", "self_attn.out_proj.": "self_attn.proj."}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    return out
