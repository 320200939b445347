"""Hugging Face interop: ``GPT.from_pretrained`` and ``GPT.save_hf`` delegate here.

Two kinds of directory, both written by ``save_hf`` and read back by ``from_pretrained``:

* dense-MLP models: a standard ``GPT2LMHeadModel`` (config.json + model.safetensors);
* NdLinear-MLP models (NdGPT-2 and its variants; also bias=False): model_type "ndgpt2", loaded with
  ``trust_remote_code=True``. The directory holds ``modeling_ndgpt2.py`` and the modules of this
  package it imports at module level (gpt2.py, ndlinear.py, ...), copied at export time with
  ``from models.X`` imports rewritten to ``from .X``: the exported code is this repository's code, not
  a second copy (see remote_code_files).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from models.gpt2 import GPT, GPTConfig

# HF GPT-2 uses Conv1D (weight stored as in x out); ours are nn.Linear (out x in).
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers versions
NDGPT2_AUTO_MAP = {"AutoConfig": "modeling_ndgpt2.NdGPT2Config",
                   "AutoModelForCausalLM": "modeling_ndgpt2.NdGPT2ForCausalLM"}


def from_pretrained(name_or_dir: str = "gpt2") -> GPT:
    """A GPT from a hub name ("gpt2", "gpt2-medium", ...; online) or a local directory: an HF GPT-2
    checkpoint, or an NdGPT-2 directory written by ``save_hf`` (read directly, no remote code run)."""
    config_file = Path(name_or_dir) / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "ndgpt2":
        return _load_ndgpt2(Path(name_or_dir))
    from transformers import GPT2LMHeadModel

    hf, info = GPT2LMHeadModel.from_pretrained(name_or_dir, output_loading_info=True)
    c = hf.config
    missing = sorted(k for k in info["missing_keys"] if not k.endswith(_MASK_BUFFERS) and k != "lm_head.weight")
    mismatched = sorted(str(k) for k in info["mismatched_keys"])
    if not c.tie_word_embeddings:
        raise ValueError("an untied LM head (tie_word_embeddings=False): GPT ties it to the token embedding")
    if c.model_type != "gpt2" or missing or mismatched:  # transformers would fill them at random
        raise ValueError(f"not a complete GPT-2 checkpoint (model_type {c.model_type!r}; missing weights "
                         f"{missing[:3]}{'...' if len(missing) > 3 else ''}; mismatched {mismatched[:3]})")
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(c.activation_function)
    if gelu is None:
        raise ValueError(f"unsupported GPT-2 activation {c.activation_function!r}")
    config = GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                       n_embd=c.n_embd, bias=True, gelu=gelu, mlp_hidden=c.n_inner or 0)
    state = _swap_conv1d({k: v for k, v in hf.state_dict().items() if not k.endswith(_MASK_BUFFERS)})
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])
    model = GPT(config)
    model.load_state_dict(state, strict=True)
    return model


def save_hf(model: GPT, out_dir: str) -> None:
    """Write an HF directory of ``model``: a GPT2LMHeadModel for a dense MLP with biases, else the
    "ndgpt2" remote-code architecture. Weights are saved as they are (a pruned model keeps its zeros)."""
    if is_gpt2_compatible(model.config):
        _save_gpt2(model, out_dir)
    else:
        _save_ndgpt2(model, Path(out_dir))


def is_gpt2_compatible(config: GPTConfig) -> bool:
    """Dense MLP with biases: transformers' GPT2LMHeadModel computes it. Anything else is "ndgpt2"."""
    return config.mlp == "dense" and config.bias


def _save_gpt2(model: GPT, out_dir: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                           n_layer=c.n_layer, n_head=c.n_head, n_inner=c.mlp_hidden or None,
                           activation_function="gelu_new" if c.gelu == "tanh" else "gelu",
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    hf = GPT2LMHeadModel(hf_config)
    missing, unexpected = hf.load_state_dict(_swap_conv1d(model.state_dict()), strict=False)
    if unexpected or [k for k in missing if not k.endswith(_MASK_BUFFERS)]:
        raise RuntimeError(f"HF export mismatch: missing={missing} unexpected={unexpected}")
    hf.save_pretrained(out_dir)


def _save_ndgpt2(model: GPT, out_dir: Path) -> None:
    from models.modeling_ndgpt2 import NdGPT2Config, NdGPT2ForCausalLM

    config = NdGPT2Config(**model.config.to_dict(), architectures=["NdGPT2ForCausalLM"],
                          auto_map=NDGPT2_AUTO_MAP, dtype="float32")
    hf = NdGPT2ForCausalLM(config)
    hf.model.load_state_dict(model.state_dict())
    hf.save_pretrained(out_dir)
    for name, text in remote_code_files().items():
        (out_dir / name).write_text(text, encoding="utf-8")


def _load_ndgpt2(directory: Path) -> GPT:
    from safetensors.torch import load_file

    from models.modeling_ndgpt2 import GPT_FIELDS

    config = json.loads((directory / "config.json").read_text())
    index = directory / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    state = {k.removeprefix("model."): v for shard in shards for k, v in load_file(directory / shard).items()}
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])
    model = GPT(GPTConfig(**{k: config[k] for k in GPT_FIELDS if k in config}))
    model.load_state_dict(state, strict=True)
    return model


def remote_code_files() -> dict[str, str]:
    """{file name: source} of modeling_ndgpt2.py and the modules of this package it imports at module
    level, transitively, with ``from models.X import`` / ``from models import X`` made relative.

    Imports inside functions are not followed: what the model needs is imported at module level. Such an
    import of a module left out (GPT.from_pretrained/save_hf's ``models.hf``) becomes ``raise ImportError``
    in the copy, since transformers loads every module a remote-code file names, inside functions too.
    """
    package = Path(__file__).resolve().parent
    sources, todo = {}, ["modeling_ndgpt2"]
    while todo:
        name = todo.pop()
        if name not in sources:
            sources[name] = (package / f"{name}.py").read_text(encoding="utf-8")
            todo += [m for node in ast.parse(sources[name]).body for m in _package_imports(node, name)]
    return {f"{name}.py": _made_relative(source, name, set(sources)) for name, source in sources.items()}


def _package_imports(node: ast.AST, where: str) -> list[str]:
    """The modules of this package that the statement ``node`` of models/``where``.py imports."""
    if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "models" for a in node.names):
        raise RuntimeError(f"models/{where}.py: write 'from models.X import Y' for the HF export")
    if not isinstance(node, ast.ImportFrom):
        return []
    if (node.level, node.module) in ((0, "models"), (1, None)):
        modules = [a.name for a in node.names]  # from models import X / from . import X
    elif (node.level == 0 and node.module.startswith("models.")) or node.level == 1:
        modules = [node.module.removeprefix("models.").split(".")[0]]
    else:
        return []
    package = Path(__file__).resolve().parent
    for module in modules:
        if not (package / f"{module}.py").is_file():
            raise RuntimeError(f"models/{where}.py imports {module!r}, which is not a module file")
    return modules


def _made_relative(source: str, name: str, shipped: set[str]) -> str:
    """``source`` (of models/``name``.py) with its imports of ``shipped`` modules made relative and any
    other import of this package (one inside a function) replaced by ``raise ImportError``."""
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        modules = _package_imports(node, name)
        if not modules:
            continue
        first = node.lineno - 1
        if set(modules) <= shipped:
            lines[first] = re.sub(r"^(\s*)from models\b\.?", r"\1from .", lines[first])
        else:
            message = f"{', '.join(f'models/{m}.py' for m in modules)} is not in this export (see the NdGPT-2 repo)"
            lines[first:node.end_lineno] = [f"{lines[first][:node.col_offset]}raise ImportError({message!r})\n",
                                            *[""] * (node.end_lineno - node.lineno)]
    return "".join(lines)


def _swap_conv1d(sd: dict) -> dict:
    """Our state dict <-> HF GPT-2's: the _TRANSPOSED weights transposed (the same swap both ways)."""
    return {k: (v.t().contiguous() if k.endswith(_TRANSPOSED) else v) for k, v in sd.items()}
