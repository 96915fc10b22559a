"""A small vision transformer: patch-embedding conv, class token, ``nn.TransformerEncoder``, LayerNorm, head.

Pre-norm ``nn.TransformerEncoderLayer``s (``nn.MultiheadAttention``, GELU MLP,
batch first), a learned position embedding, and the class token's final state
(``pool="cls"``) or the mean over tokens (``pool="mean"``) as the feature.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_input

__all__ = ["VisionTransformer"]


class VisionTransformer(nn.Module):
    """patch_embed (Conv2d, stride = patch) -> [cls] + tokens + pos_embed -> encoder -> norm -> head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        patch: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        check_input(input_shape, num_classes, "(C, H, W)", (3,))
        c, h, w = (int(s) for s in input_shape)
        if patch < 1 or h % patch or w % patch:
            raise ValueError(f"patch must be >= 1 and divide the image size {h}x{w}, got {patch}")
        if dim < 1 or heads < 1 or dim % heads:
            raise ValueError(f"dim must be a positive multiple of heads, got dim={dim}, heads={heads}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch) + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim * mlp_ratio, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        # nested tensors do not apply to pre-norm layers (torch would warn about it)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.encoder(x))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))
