"""A complete Hugging Face directory of a GPT of this repository: the model (models/hf.py) plus the
GPT-2 tokenizer, so that ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained(DIR)`` work offline.

Tokenizer files are built from OpenAI's BPE files (the same ones utils/tokenizer.py checks against
tiktoken's sha256): vocab.json + merges.txt (the slow tokenizer's files) and tokenizer.json (the fast
one). ``<|endoftext|>`` (50256) is the bos, eos and unk token, and the pad token too: GPT-2 has no
padding token, and with an attention mask (or right padding) its value never matters. The model's
vocabulary is padded to 50304; ids 50257..50303 have no text and the tokenizer never produces them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError

from utils.cli import UserError, check_writable_dir
from utils.io import alive, remove_dead_tmp, space_note
from utils.tokenizer import EOT, bpe_files

EOT_TEXT = "<|endoftext|>"


def save_tokenizer(out_dir: str | os.PathLike, model_max_length: int) -> None:
    """Write the GPT-2 tokenizer files into ``out_dir`` (ids equal tiktoken's "gpt2", specials allowed)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    out_dir = Path(out_dir)
    vocab_bpe, encoder_json = bpe_files()
    shutil.copyfile(encoder_json, out_dir / "vocab.json")
    shutil.copyfile(vocab_bpe, out_dir / "merges.txt")
    tok = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(EOT_TEXT, special=True, normalized=False)])
    if tok.token_to_id(EOT_TEXT) != EOT:
        raise RuntimeError(f"{EOT_TEXT} got id {tok.token_to_id(EOT_TEXT)}, expected {EOT}")
    tok.save(str(out_dir / "tokenizer.json"))
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "pad_token": EOT_TEXT}
    config = {"tokenizer_class": "GPT2Tokenizer", **special, "add_prefix_space": False, "add_bos_token": False,
              "model_max_length": model_max_length, "errors": "replace"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def check_export_dir(out: str | os.PathLike, flag: str = "--out", *, force: bool = False, inputs: tuple = ()) -> None:
    """Fail before any work if ``out`` cannot become an export directory: a file, an existing directory
    without ``force`` (or, with it, one that is not an HF export: replacing it would delete its files),
    an input inside it, or a parent that cannot be written."""
    out = Path(out)
    if out.parent.is_dir():
        restore_killed_swap(out.resolve())
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file; give a directory path")
    if out.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise UserError(f"{flag} {out} is or holds the current directory; give another path")
    for other in inputs:
        if other is not None and out.resolve() in Path(other).resolve().parents:
            raise UserError(f"{flag} {out} holds the input {other}; choose another directory")
    if out.is_dir():
        if not force:
            raise UserError(f"{flag} {out} exists; pass --force to replace it")
        if any(out.iterdir()) and not (out / "config.json").is_file():
            raise UserError(f"{flag} {out} exists and is not an HF export (no config.json); not replacing it")
    check_writable_dir(out.parent, flag, out)


PROVENANCE = "ndgpt2_provenance"  # config.json key: what the export holds (see write_provenance)
PROVENANCE_KEYS = ("model_name", "step", "fingerprint", "run_id", "parent", "trained_on", "train_seed", "data_id",
                   "pruning", "earlier_pruning")


def read_provenance(name_or_dir: str) -> dict:
    """What export_hf.py recorded in a local export's config.json (model name, step, fingerprint, run,
    parent, pruning passes); {} for a hub name or a directory from elsewhere."""
    try:
        config = json.loads((Path(name_or_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found = config.get(PROVENANCE) if isinstance(config, dict) else None
    return {k: v for k, v in found.items() if k in PROVENANCE_KEYS} if isinstance(found, dict) else {}


def write_provenance(out_dir: Path, provenance: dict) -> None:
    path = Path(out_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config[PROVENANCE] = {k: provenance[k] for k in PROVENANCE_KEYS if provenance.get(k) is not None}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def restore_killed_swap(out: Path) -> None:
    """An export killed between its two renames left ``.NAME.PID.old`` (the previous export) and no NAME:
    put it back, so the next export sees what was there. Where NAME exists, the leftover is removed."""
    for old in out.parent.glob(f".{glob.escape(out.name)}.*.old"):
        pid = old.name.rsplit(".", 2)[-2]
        if pid == str(os.getpid()) or not alive(pid):
            if out.exists() or out.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(out)


def export_hf(model, out_dir: str | os.PathLike, readme: str = "", provenance: dict | None = None) -> Path:
    """Write ``model``'s HF directory (weights, config with ``provenance``, code for NdLinear models, tokenizer,
    README.md) into a temp sibling of ``out_dir``, then swap it in: a failure leaves any old ``out_dir`` whole."""
    out = Path(out_dir).resolve()  # a symlink: its target is replaced
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    remove_dead_tmp(out)  # of an export that was killed
    shutil.rmtree(tmp, ignore_errors=True)  # ours, left by a killed process that had this PID
    try:
        tmp.mkdir(parents=True)
        model.save_hf(str(tmp))
        if provenance:
            write_provenance(tmp, provenance)
        save_tokenizer(tmp, model.config.block_size)
        if readme:
            (tmp / "README.md").write_text(readme, encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for path in tmp.iterdir():  # transformers writes its weights 0600 (a temp file renamed)
            path.chmod(0o666 & ~umask)
        if out.exists():
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:  # Ctrl-C included: the old export goes back in place
            if old.exists():
                old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
        raise UserError(f"cannot write {out}: {getattr(e, 'strerror', None) or e} ({space_note(out.parent)})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
