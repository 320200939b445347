"""GPT-2 (nanoGPT-style) with the MLP as a config choice.

``GPTConfig.mlp`` picks the feed-forward layer of every block:

* ``"dense"``: ``Linear(C, mlp_hidden) -> GELU -> Linear(mlp_hidden, C)``, the GPT-2 MLP
  (``mlp_hidden`` defaults to 4*C; 1536 at C=768 gives the equal-parameter control of NdGPT-2).
* ``"ndlinear"``: NdGPT-2. The block input (B, T, C) is viewed as (B*T, *nd_in) and mapped by
  ``NdLinear(nd_in -> nd_hidden)``, GELU, ``NdLinear(nd_hidden -> nd_in)`` (see models/ndgpt2.py).

What NdGPT-2's NdLinear((768, 1) -> (1536, 2)) computes: mode 1 maps 768 -> 1536 (a dense
768x1536 matrix W1), mode 2 maps 1 -> 2 (two scalars a, a' and two biases c, c'). So fc1 produces
one 1536-wide hidden vector z = W1 x + b1 and two affine copies (a z + c, a' z + c'); GELU acts on
each copy; fc2 maps both copies back with ONE shared 1536 -> 768 matrix and mixes the two results
with a learned 2 -> 1 combination. In other words, a 1536-wide dense MLP whose activation is a
learned two-branch function g(z) = w GELU(a z + c) + w' GELU(a' z + c'), at 96,146,004 parameters
-- the same budget as a dense GPT-2 with MLP hidden 1536 (96,145,920), its fair control.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.ndlinear import NdLinear, branch_mlp, is_branch_pair


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


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
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
    """The NdGPT-2 feed-forward: NdLinear(nd_in -> nd_hidden), GELU, NdLinear(nd_hidden -> nd_in)."""

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
        if self.branched and not (self.c_fc.observed() or self.c_proj.observed()):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
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
            _init_ndlinear(module, std)

    def num_params(self) -> int:
        """Parameters with the tied head counted once."""
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx: torch.Tensor, sparse_embedding_grad: bool = False) -> torch.Tensor:
        """Final-LayerNorm output (B, T, C): what the LM head reads."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        tok = F.embedding(idx, self.transformer.wte.weight, sparse=sparse_embedding_grad)
        x = tok + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        # With a loss the tied head gives wte a dense gradient in the same backward, so the lookup's
        # gradient can be sparse (B*T rows) and is added into it: on the CPU this saves building,
        # zeroing and adding a dense (vocab, C) matrix every step. The parameter's .grad stays dense.
        sparse = targets is not None and idx.device.type == "cpu" and not torch.compiler.is_compiling()
        logits = self.lm_head(self.hidden_states(idx, sparse_embedding_grad=sparse))
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.95),
                             eps: float = 1e-8, device_type: str = "cpu") -> torch.optim.AdamW:
        """AdamW with weight decay on >= 2-D parameters (matmuls, embeddings) only; fused kernels where
        torch has them (CUDA, and CPU since torch 2.4)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), eps=eps,
                                 **({"fused": True} if fused else {}))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = 50,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T); top-k then multinomial."""
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be >= 1")
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]
            logits = self.lm_head(self.hidden_states(context)[:, -1, :]).float() / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
        return idx

    # ----- OpenAI / Hugging Face interop -----

    @classmethod
    def from_pretrained(cls, name_or_dir: str = "gpt2") -> GPT:
        """OpenAI GPT-2 weights through transformers: a hub name ("gpt2", "gpt2-medium", ...)
        when online, or a local directory holding an HF GPT-2 checkpoint."""
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        c = hf.config
        gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(c.activation_function)
        if gelu is None:
            raise ValueError(f"unsupported GPT-2 activation {c.activation_function!r}")
        config = GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                           n_embd=c.n_embd, bias=True, gelu=gelu,
                           mlp_hidden=c.n_inner or 4 * c.n_embd)
        model = cls(config)
        model.load_state_dict(_hf_to_ours(hf.state_dict()), strict=True)
        return model

    def save_hf(self, out_dir: str) -> None:
        """Write an HF directory that ``GPT2LMHeadModel.from_pretrained`` loads (dense MLP only)."""
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        if c.mlp != "dense":
            raise ValueError("only dense-MLP GPT-2 models can be exported to transformers' GPT2LMHeadModel")
        hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                               n_layer=c.n_layer, n_head=c.n_head, n_inner=c.mlp_hidden or None,
                               activation_function="gelu_new" if c.gelu == "tanh" else "gelu",
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
        hf = GPT2LMHeadModel(hf_config)
        missing, unexpected = hf.load_state_dict(_ours_to_hf(self.state_dict()), strict=False)
        if unexpected or [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]:
            raise RuntimeError(f"HF export mismatch: missing={missing} unexpected={unexpected}")
        hf.save_pretrained(out_dir)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over (N, V) logits in fp32, ignoring targets of -1.

    On the CPU the fp32 copy of the logits and the log-softmax round trip are memory-bound and take
    a quarter of a small model's step. The CPU version works on cache-sized row chunks in fp32 and,
    when a gradient is wanted, computes it in the same pass (softmax minus one-hot, over the count),
    so the backward is one scaling pass. On GPUs F.cross_entropy (fused by torch.compile) is fast.
    """
    if logits.device.type != "cpu":
        return F.cross_entropy(logits.float(), targets, ignore_index=-1)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _ChunkedCrossEntropy.apply(logits, targets)
    return _chunked_cross_entropy(logits, targets)[0]


def _chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, with_grad: bool = False):
    """(mean loss, d loss / d logits or None); the gradient has the logits' dtype."""
    n, vocab = logits.shape
    rows = max(1, (1 << 20) // vocab)  # ~4 MB of fp32 per chunk: stays in cache
    valid = targets != -1
    safe_targets = targets.clamp_min(0)
    count = valid.sum()
    weight = valid.float() / count.clamp_min(1)  # d loss / d (per-row loss)
    nll = torch.empty(n, dtype=torch.float32, device=logits.device)
    grad = torch.empty_like(logits) if with_grad else None
    for start in range(0, n, rows):
        end = min(start + rows, n)
        chunk, target = logits[start:end], safe_targets[start:end]
        probs = torch.softmax(chunk, dim=-1, dtype=torch.float32)  # one fused pass, fp32 maths
        at_target = (torch.arange(end - start, device=probs.device), target)
        log_p = probs[at_target].log()
        underflow = torch.isinf(log_p)
        if underflow.any():  # p(target) below fp32's range (a logit gap > ~87 nats): exact, slower
            exact = chunk[underflow].float()
            log_p[underflow] = exact.gather(1, target[underflow, None]).squeeze(1) - exact.logsumexp(dim=-1)
        nll[start:end] = -log_p
        if with_grad:  # softmax - one_hot(target), weighted per row
            probs.mul_(weight[start:end, None])
            probs[at_target] -= weight[start:end]
            grad[start:end] = probs
    return (nll * valid).sum() / count, grad


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):
        loss, grad = _chunked_cross_entropy(logits, targets, with_grad=True)
        ctx.grad = grad  # not save_for_backward: backward scales it in place and hands it on
        return loss

    @staticmethod
    def backward(ctx, upstream):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("cross_entropy: backward through the same loss twice is not supported")
        return (grad if upstream.item() == 1.0 else grad.mul_(upstream)), None


# HF GPT-2 uses Conv1D (weight stored as in x out); ours are nn.Linear (out x in).
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _hf_to_ours(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.endswith(("attn.masked_bias", "attn.bias")) and "c_attn" not in k and "c_proj" not in k:
            continue  # causal-mask buffers of older transformers versions
        out[k] = v.t().contiguous() if k.endswith(_TRANSPOSED) else v
    out.setdefault("lm_head.weight", out["transformer.wte.weight"])
    return out


def _ours_to_hf(sd: dict) -> dict:
    return {k: (v.t().contiguous() if k.endswith(_TRANSPOSED) else v) for k, v in sd.items()}


def _init_ndlinear(layer: NdLinear, std: float) -> None:
    """GPT-2 init for the factor that carries the width (the largest); the small mode-mixing factors
    keep nn.Linear's default U(+-1/sqrt(fan_in)) init: N(0, 0.02) on a 1 -> 2 factor would scale the
    whole signal down 50x. Biases start at zero."""
    big = max(layer.align_layers, key=lambda m: m.weight.numel())
    for factor in layer.align_layers:
        if factor is big:
            nn.init.normal_(factor.weight, mean=0.0, std=std)
        else:
            factor.reset_parameters()
        nn.init.zeros_(factor.bias)
