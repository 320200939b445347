"""ViT-S/16 (Dosovitskiy et al. 2020; the original NdGPT-2 repository's vision baseline).

Patch embedding -> class token + learned positions -> pre-LN blocks (``x + attn(ln(x))``,
``x + mlp(ln(x))``) -> final LayerNorm -> linear head on the class token. No dropout, no DropPath.

The blocks build their linear layers through ``ViT._make_linear``, the patch embedding through
``_make_patch_embed`` and the head through ``_make_head``: NdViT (models/ndvit.py) overrides only
those three. ``models.build_vit("vit" | "ndvit", **overrides)`` returns either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.params import count_params


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 10
    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0

    def __post_init__(self):
        for name in ("image_size", "patch_size", "in_chans", "num_classes", "width", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives an empty MLP at width {self.width}")

    @property
    def seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # patches + class token

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches, each flattened (channel, row, column) and mapped by one Linear to
    ``width``: the maths of the usual stride-p convolution, but much faster backward on CPU."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Linear(config.in_chans * config.patch_size ** 2, config.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, C, H, W = images.shape
        p = self.patch_size
        patches = images.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * p * p)
        return self.proj(patches)  # (B, patches, width), raster order


class Attention(nn.Module):
    def __init__(self, config: ViTConfig, make_linear):
        super().__init__()
        self.heads = config.heads
        self.qkv = make_linear(config.width, 3 * config.width)
        self.proj = make_linear(config.width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # bidirectional: every patch sees every patch
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: ViTConfig, make_linear):
        super().__init__()
        self.fc1 = make_linear(config.width, config.mlp_hidden)
        self.fc2 = make_linear(config.mlp_hidden, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: ViTConfig, make_linear):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width)
        self.attn = Attention(config, make_linear)
        self.norm2 = nn.LayerNorm(config.width)
        self.mlp = MLP(config, make_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.patch_embed = self._make_patch_embed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.seq_len, config.width))
        self.blocks = nn.ModuleList(Block(config, self._make_linear) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.head = self._make_head()
        self._init_weights()

    def _make_patch_embed(self) -> nn.Module:
        return PatchEmbed(self.config)

    def _make_linear(self, in_features: int, out_features: int) -> nn.Module:
        """A token-wise linear map (B, T, in) -> (B, T, out)."""
        return nn.Linear(in_features, out_features)

    def _make_head(self) -> nn.Module:
        """Maps the final class token (B, 1, width) to logits (B, 1, classes)."""
        return nn.Linear(self.config.width, self.config.num_classes)

    def _init_weights(self) -> None:
        # timm ViT init: truncated N(0, 0.02) for Linear weights and positions, zero biases.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        """models.params.count_params's total."""
        return count_params(self, nonzero=False)["total"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (c.in_chans, c.image_size, c.image_size):
            raise ValueError(f"expected images (B, {c.in_chans}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(images.shape)}")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, :1]).squeeze(1)  # (B, classes)
