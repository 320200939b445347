"""NdViT: ViT whose every linear layer is an NdLinear (as in the original NdGPT-2 repository).

* Patch embedding: each p x p x C patch is kept as a 3-mode tensor and mapped by
  ``NdLinear((p, p, C) -> (1, 1, width))``: two p -> 1 poolings and one C -> width map, i.e. a
  rank-one (separable) patch filter per output channel instead of a dense p*p*C -> width matrix.
* Attention QKV / output and the MLP: ``NdLinear((seq_len, width) -> (seq_len, k * width))`` on the
  whole token sequence, so besides the usual width map every such layer also mixes the tokens with a
  learned seq_len x seq_len matrix (a fixed sequence length: the image size cannot change later).
* Head: ``NdLinear((1, width) -> (1, classes))`` on the class token (a Linear plus a 1 -> 1 scale).

The factors keep nn.Linear's default init (as the ndlinear package): N(0, 0.02) on a 16 -> 1 pooling
factor would shrink the patch embedding to nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from models.ndlinear import NdLinear
from models.vit import ViT, ViTConfig


class NdPatchEmbed(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = NdLinear((config.patch_size, config.patch_size, config.in_chans), (1, 1, config.width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, C, H, W = images.shape
        p = self.patch_size
        # (B, C, H, W) -> (B, rows, cols, p, p, C): patch (r, c) holds images[:, :, r*p:(r+1)*p, c*p:(c+1)*p]
        patches = images.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return self.proj(patches).flatten(1, -2)  # (B, patches, width), raster order


class NdViT(ViT):
    def _make_patch_embed(self) -> nn.Module:
        return NdPatchEmbed(self.config)

    def _make_linear(self, in_features: int, out_features: int) -> nn.Module:
        s = self.config.seq_len
        return NdLinear((s, in_features), (s, out_features))

    def _make_head(self) -> nn.Module:
        return NdLinear((1, self.config.width), (1, self.config.num_classes))

    def _init_weights(self) -> None:
        super()._init_weights()
        for m in self.modules():
            if isinstance(m, NdLinear):
                for factor in m.align_layers:
                    factor.reset_parameters()
