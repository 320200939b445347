"""GPT-2 (nanoGPT-style) with the MLP as a config choice.

``GPTConfig.mlp`` picks the feed-forward layer of every block:

* ``"dense"``: ``Linear(C, mlp_hidden) -> GELU -> Linear(mlp_hidden, C)``, the GPT-2 MLP
  (``mlp_hidden`` defaults to 4*C; 1536 at C=768 gives the equal-parameter control of NdGPT-2).
* ``"ndlinear"``: NdGPT-2. The block input (B, T, C) is viewed as (B*T, *nd_in) and mapped by
  ``NdLinear(nd_in -> nd_hidden)``, GELU, ``NdLinear(nd_hidden -> nd_in)`` (presets in models/__init__.py).

What NdGPT-2's NdLinear((768, 1) -> (1536, 2)) computes: mode 1 maps 768 -> 1536 (a dense
768x1536 matrix W1), mode 2 maps 1 -> 2 (two scalars a, a' and two biases c, c'). So fc1 produces
one 1536-wide hidden vector z = W1 x + b1 and two affine copies (a z + c, a' z + c'); GELU acts on
each copy; fc2 maps both copies back with ONE shared 1536 -> 768 matrix and mixes the two results
with a learned 2 -> 1 combination. In other words, a 1536-wide dense MLP whose activation is a
learned two-branch function g(z) = w GELU(a z + c) + w' GELU(a' z + c'), at 96,146,004 parameters
-- the same budget as a dense GPT-2 with MLP hidden 1536 (96,145,920), its fair control.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.ndlinear import NdLinear
from models.ndlinear_kernels import branch_mlp, is_branch_pair
from models.params import count_params


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # 50257 padded up to a multiple of 128
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    bias: bool = True
    gelu: str = "tanh"  # "tanh" (OpenAI GPT-2, build-nanogpt) or "none" (exact erf GELU)
    mlp: str = "dense"  # "dense" or "ndlinear"
    mlp_hidden: int = 0  # dense MLP width; 0 means 4 * n_embd
    nd_in: tuple[int, ...] = field(default_factory=tuple)  # NdLinear MLP: view of the C features
    nd_hidden: tuple[int, ...] = field(default_factory=tuple)  # NdLinear MLP: hidden tensor shape

    def __post_init__(self):
        self.nd_in, self.nd_hidden = tuple(self.nd_in), tuple(self.nd_hidden)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.gelu not in ("tanh", "none"):
            raise ValueError(f"gelu must be 'tanh' or 'none', got {self.gelu!r}")
        if self.mlp not in ("dense", "ndlinear"):
            raise ValueError(f"mlp must be 'dense' or 'ndlinear', got {self.mlp!r}")
        if self.mlp == "ndlinear" and (math.prod(self.nd_in) != self.n_embd or len(self.nd_in) != len(self.nd_hidden)):
            raise ValueError(f"NdLinear MLP: nd_in {self.nd_in} must multiply to n_embd={self.n_embd} and "
                             f"have as many modes as nd_hidden {self.nd_hidden}")

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """One layer's keys and values for generation: (B, n_head, block_size, head_dim), filled left to right."""

    def __init__(self):
        self.k = self.v = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, n_head, T, head_dim) keys and values; return those of every position so far."""
        if self.k is None:
            B, H, _, D = k.shape
            self.k, self.v = (k.new_empty(B, H, block_size, D) for _ in range(2))
        start, end = self.length, self.length + k.size(2)
        if end > block_size or (start and k.size(2) > 1):
            raise ValueError("KVCache: a prompt first, then one token at a time, up to block_size in all")
        self.k[:, :, start:end], self.v[:, :, start:end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.block_size = config.block_size
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_init = True

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.append(k, v, self.block_size)  # one new token attends to every cached one
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_hidden or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class NdMLP(nn.Module):
    """The NdGPT-2 feed-forward: NdLinear(nd_in -> nd_hidden), GELU, NdLinear(nd_hidden -> nd_in).

    NdGPT-2's (C, 1) -> (2C, 2) shape runs as one fused kernel (models/ndlinear_kernels.py branch_mlp), except
    under models.ndlinear.literal_path, which runs the literal maths below through the factor modules.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.nd_in = config.nd_in
        self.c_fc = NdLinear(config.nd_in, config.nd_hidden)
        self.gelu = nn.GELU(approximate=config.gelu)
        self.c_proj = NdLinear(config.nd_hidden, config.nd_in)
        self.c_proj.residual_init = True
        self.branched = is_branch_pair(self.c_fc, self.c_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if self.branched and not (self.c_fc.literal or self.c_proj.literal):
            return branch_mlp(x.view(B * T, C), self.c_fc, self.c_proj, self.gelu.approximate).view(B, T, C)
        h = self.gelu(self.c_fc(x.view(B * T, *self.nd_in)))
        return self.c_proj(h).view(B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config) if config.mlp == "dense" else NdMLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # build-nanogpt init: N(0, 0.02), zero biases, residual projections scaled by (2 L)^-0.5.
        # The tied head is skipped: scaling it would shrink the token embedding (the original's defect).
        if module is self.lm_head:
            return
        std = 0.02 * ((2 * self.config.n_layer) ** -0.5 if getattr(module, "residual_init", False) else 1.0)
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, NdLinear):
            # GPT-2 init for the factor that carries the width (the largest); the small mode-mixing factors
            # keep nn.Linear's default U(+-1/sqrt(fan_in)) init: N(0, 0.02) on a 1 -> 2 factor would scale
            # the whole signal down 50x. Biases start at zero.
            big = max(module.align_layers, key=lambda m: m.weight.numel())
            for factor in module.align_layers:
                if factor is big:
                    nn.init.normal_(factor.weight, mean=0.0, std=std)
                else:
                    factor.reset_parameters()
                nn.init.zeros_(factor.bias)

    def num_params(self) -> int:
        """Parameters with the tied head counted once (models.params.count_params's total)."""
        return count_params(self, nonzero=False)["total"]

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token + position embeddings of idx (B, T) at positions start..start+T-1: the first block's input."""
        pos = torch.arange(start, start + idx.size(1), device=idx.device)
        return self.transformer.wte(idx) + self.transformer.wpe(pos)

    def hidden_states(self, idx: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Final-LayerNorm output (B, T, C): what the LM head reads. With ``caches`` (one per layer,
        see generate) idx continues the cached positions."""
        T = idx.size(1)
        start = caches[0].length if caches else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} exceeds block_size {self.config.block_size}")
        x = self.embed(idx, start)
        for i, block in enumerate(self.transformer.h):
            x = block(x, caches[i] if caches else None)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.lm_head(self.hidden_states(idx))
        loss = None if targets is None else self.loss(logits, targets)
        return logits, loss

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in fp32 over the targets that are not -1 (models.gpt_kernels.use_cpu_kernels
        swaps in a faster CPU version)."""
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.95),
                             eps: float = 1e-8, device_type: str = "cpu") -> torch.optim.AdamW:
        """AdamW with weight decay on >= 2-D parameters (matmuls, embeddings) only; fused kernels where
        torch has them (CUDA, and CPU since torch 2.4)."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = True if device_type in ("cuda", "cpu") else None  # None: torch's own choice (e.g. mps)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), eps=eps, fused=fused)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = 50,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 on_token: Callable[[], None] | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T): top-k, then multinomial (top_k=1: argmax).
        ``on_token`` is called after every step (a progress bar).

        With ``use_cache`` the prompt runs once and every later step only the new token, reading the
        keys and values of the earlier ones from a per-layer KVCache. Once the sequence outgrows
        block_size, every step recomputes the last block_size tokens (the context is cropped, as
        without the cache).
        """
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be >= 1")
        caches = [KVCache() for _ in self.transformer.h] if use_cache else None
        for _ in range(max_new_tokens):
            if caches is None or idx.size(1) > self.config.block_size:
                hidden = self.hidden_states(idx[:, -self.config.block_size:])
            else:  # only the tokens the caches do not hold yet
                hidden = self.hidden_states(idx[:, caches[0].length:], caches)
            logits = self.lm_head(hidden[:, -1, :]).float()
            logits = (logits - logits.amax(-1, keepdim=True)) / temperature  # max first: a tiny T stays finite
            if top_k == 1:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
            if on_token is not None:
                on_token()
        return idx

    @classmethod
    def from_pretrained(cls, name_or_dir: str = "gpt2") -> GPT:
        """OpenAI GPT-2 weights through transformers (a hub name or a local HF directory); see models/hf.py."""
        from models.hf import from_pretrained

        return from_pretrained(name_or_dir)

    def save_hf(self, out_dir: str) -> None:
        """Write an HF directory that transformers loads; see models/hf.py."""
        from models.hf import save_hf

        save_hf(self, out_dir)
