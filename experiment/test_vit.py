"""Top-1 accuracy of a ViT / NdViT checkpoint (saved by experiment/train_vit.py) on a test split.

    python experiment/test_vit.py --ckpt logs/vit-vit/model_005.pt            # the data it was trained on
    python experiment/test_vit.py --ckpt model_020.pt --data ../cifar-10-batches-py --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import ArgumentParser, UserError, add_runtime_args, pick_device, positive_int, run_main
from utils.precision import resolve_amp
from utils.vision_data import evaluate, load_image_data, load_vit

PROG = "test_vit.py"


def parse_args(argv=None):
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train_vit.py")
    p.add_argument("--data", default=None,
                   help="synthetic, cifar10 or PATH (default: the data the checkpoint was trained on)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch size (default 64)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N test images")
    add_runtime_args(p)  # --device, --amp/--no-amp
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    model, ckpt = load_vit(args.ckpt, device)
    data = load_image_data(args.data or ckpt.get("data", "synthetic"), *ckpt.get("synthetic_size", ()))
    if data.num_classes != model.config.num_classes:
        raise UserError(f"checkpoint has {model.config.num_classes} classes, {data.name} has {data.num_classes}")
    amp = resolve_amp(device, args.amp)
    result = evaluate(model, data.test.head(args.limit), args.batch_size, device, desc="test", amp=amp)
    report = {"ckpt": str(args.ckpt), "model": ckpt["model_name"], "epoch": ckpt.get("epoch"),
              "data": data.name, "params": model.num_params(), "amp": amp, **result}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['model']} ({report['params']:,} params, epoch {report['epoch']}) on {data.name} test "
              f"({result['n']:,} images): top-1 {result['top1']:.4f}, loss {result['loss']:.4f}")


if __name__ == "__main__":
    run_main(main, PROG)
