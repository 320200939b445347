"""Export a checkpoint of this repository (any model: dense, NdGPT-2, pruned) as a Hugging Face directory.

    python experiment/export_hf.py --ckpt logs/gpt2-smoke/model_00200.pt --out exports/gpt2-smoke

The directory loads offline with transformers:
    AutoTokenizer.from_pretrained(DIR)
    AutoModelForCausalLM.from_pretrained(DIR)                          # dense: a GPT2LMHeadModel
    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)  # NdGPT-2: model_type "ndgpt2"
and with --hf DIR in every script of this repository (generate.py, test_gpt.py, wanda.py).
Weights are stored as they are, in fp32 (a pruned model keeps its zeros).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.hf import is_gpt2_compatible
from utils.checkpoint import load_gpt, training_of
from utils.cli import ArgumentParser, run_main
from utils.hf_export import check_export_dir, export_hf
from utils.identity import weights_fingerprint
from utils.io import check_space

PROG = "export_hf.py"
EPILOG = """\
HellaSwag with lm-evaluation-harness (pip install "lm-eval[hf]"), offline, on the local jsonl:
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \\
      --model_args pretrained=DIR,trust_remote_code=True \\
      --tasks hellaswag_local --include_path experiment/lm_eval_tasks --device cpu --batch_size 16 --limit 500
  (another file: --metadata '{"hellaswag_path": "PATH"}'; drop --limit for all 10,042 examples).
Its acc / acc_norm equal test_gpt.py's lm-eval-convention numbers (evaluation/hellaswag.py).
"""


def parse_args(argv=None) -> argparse.Namespace:
    ap = ArgumentParser(prog=PROG, description=__doc__, epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint written by train_gpt.py or pruning/wanda.py")
    ap.add_argument("--out", required=True, help="directory to write (must not exist, unless --force)")
    ap.add_argument("--force", action="store_true", help="replace an existing export directory at --out")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    check_export_dir(args.out, "--out", force=args.force, inputs=(args.ckpt,))
    model, ckpt = load_gpt(args.ckpt)
    check_space(args.out, sum(p.numel() * p.element_size() for p in model.parameters()), "--out")
    name, step = ckpt.get("model_name"), ckpt.get("step", "?")
    kind = "GPT2LMHeadModel" if is_gpt2_compatible(model.config) else "NdGPT2ForCausalLM (trust_remote_code=True)"
    readme = (f"# {name}, step {step}\n\nExported from `{args.ckpt}` by NdGPT-2's experiment/export_hf.py: "
              f"{kind}, {model.num_params():,} parameters, block size {model.config.block_size}.\n\n"
              f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"tok = AutoTokenizer.from_pretrained(DIR)\n"
              f"model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)\n```\n\n{EPILOG}")
    provenance = {**ckpt, "model_name": name, "fingerprint": weights_fingerprint(model.state_dict()),
                  **training_of(ckpt)}
    out = export_hf(model, args.out, readme=readme, provenance=provenance)
    print(f"{name} step {step} ({kind}) -> {out}")


if __name__ == "__main__":
    run_main(main, PROG)
