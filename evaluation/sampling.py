"""Text samples: a prompt's continuations, in batches that fit in memory, with a private generator."""

from __future__ import annotations

import torch
from tqdm import tqdm

from utils.precision import autocast


def encode_prompt(enc, prompt: str) -> list[int]:
    """Prompt tokens; ``<|endoftext|>`` in the text is the end-of-text token (a document boundary, as in
    the training data), not five ordinary tokens. An empty prompt starts from that token alone."""
    return enc.encode(prompt, allowed_special="all") if prompt else [enc.eot_token]


def sample_bytes(config, prompt_len: int, max_new_tokens: int) -> int:
    """Rough peak memory of one sample in ``GPT.generate``: its fp32 KV cache, the prompt's activations
    and attention scores, and a few vocabulary-wide rows (logits, top-k, softmax)."""
    T = min(prompt_len + max_new_tokens, config.block_size)
    prompt = min(prompt_len, config.block_size)
    kv = 2 * config.n_layer * T * config.n_embd
    activations = 16 * prompt * config.n_embd + config.n_head * prompt * prompt
    return 4 * (kv + activations + 4 * config.vocab_size)


@torch.no_grad()
def sample_texts(model, enc, prompt: str, num_samples: int, max_new_tokens: int, *,
                 top_k: int | None = 50, temperature: float = 1.0, seed: int = 42, device: str = "cpu",
                 amp: bool = False, use_cache: bool = True, memory_budget: int = 2 << 30,
                 progress: bool = False) -> list[str]:
    """Decode ``num_samples`` continuations of ``prompt`` (see encode_prompt). A private generator seeded
    ``seed`` leaves the global RNG (and so an exact resume) untouched. The samples run in batches whose
    estimated memory (sample_bytes) fits ``memory_budget``, so any number of them fits in memory.
    ``model`` must be the plain module (not compiled/DDP)."""
    tokens = encode_prompt(enc, prompt)
    per_batch = max(1, memory_budget // sample_bytes(model.config, len(tokens), max_new_tokens))
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    was_training = model.training
    model.eval()
    texts = []
    batches = range(0, num_samples, per_batch)
    bar = tqdm(total=len(batches) * max_new_tokens, desc="sampling", unit="tok", disable=not progress)
    for start in batches:
        idx = torch.tensor(tokens, dtype=torch.long, device=device).repeat(min(per_batch, num_samples - start), 1)
        with autocast(device, amp):
            out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator,
                                 use_cache=use_cache, on_token=bar.update)
        # an undertrained model may pick the padding ids (50257..vocab_size-1) that have no text: drop them
        texts += [enc.decode([t for t in row.tolist() if t < enc.n_vocab]) for row in out]
    bar.close()
    model.train(was_training)
    return texts
