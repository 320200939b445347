"""NdGPT-2 (and any GPT of this repository) as a Hugging Face model: ``trust_remote_code=True``.

``models/hf.py`` copies this file into an exported directory together with the modules it needs
(gpt2.py, ndlinear.py, ...), imports rewritten to relative ones, so the directory loads with
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` and no copy of this repository.
The wrapper holds our ``GPT`` as ``self.model``: the maths is this repository's, not a second copy.
No KV cache on the HF side: ``generate`` recomputes the whole context each step.
"""

from __future__ import annotations

from dataclasses import asdict, fields

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .gpt2 import GPT, GPTConfig

GPT_FIELDS = tuple(f.name for f in fields(GPTConfig))


class NdGPT2Config(PretrainedConfig):
    """The fields of ``GPTConfig`` (block_size, n_layer, mlp, nd_in, ...) as an HF config."""

    model_type = "ndgpt2"
    attribute_map = {"n_positions": "block_size", "max_position_embeddings": "block_size",
                     "hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}

    def __init__(self, **kwargs):
        defaults = asdict(GPTConfig())
        for name in GPT_FIELDS:
            value = kwargs.pop(name, defaults[name])
            setattr(self, name, list(value) if isinstance(value, tuple) else value)
        kwargs.setdefault("tie_word_embeddings", True)
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)


class NdGPT2ForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = NdGPT2Config
    base_model_prefix = "model"
    _tied_weights_keys = {"model.lm_head.weight": "model.transformer.wte.weight"}
    _supports_sdpa = True

    def __init__(self, config: NdGPT2Config):
        super().__init__(config)
        self.model = GPT(GPTConfig(**{name: getattr(config, name) for name in GPT_FIELDS}))
        self.post_init()

    def _init_weights(self, module):
        pass  # GPT initialises itself; loading overwrites every weight

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def get_output_embeddings(self):
        return self.model.lm_head

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, **kwargs) -> CausalLMOutput:
        """Logits (B, T, vocab_size); with ``labels`` the mean next-token loss (-100 ignored). Padding
        must be on the right: an attention mask with a zero before a one is refused."""
        if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("NdGPT2ForCausalLM supports right padding only (no left-padded attention_mask)")
        logits, _ = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids[:, -self.config.block_size:]}
