"""Train ViT-S/16 or NdViT on CIFAR-10 or on the synthetic image set, with per-epoch checkpoints.

    python experiment/train_vit.py                                   # synthetic, small ViT, ~1 min on CPU
    python experiment/train_vit.py --model ndvit --data cifar10      # ViT-S/16 config at 224 px, lr 1e-4
    python experiment/train_vit.py --out-dir logs/vit-vit --resume    # continue from the newest checkpoint

A resumed run continues in its checkpoint's directory (or in an empty --out-dir); resuming an older
checkpoint moves the later ones into out-dir/abandoned/. A second process writing into a run directory
fails at once (a lock).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import VIT_NAMES, build_vit
from utils import rundir
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import (
    ArgumentParser,
    UserError,
    add_runtime_args,
    check_writable_dir,
    nonneg_float,
    pick_device,
    positive_float,
    positive_int,
    run_main,
)
from utils.io import atomic_write
from utils.precision import autocast, resolve_amp
from utils.rundir import run_checkpoints
from utils.seed import seed_everything
from utils.vision_data import evaluate, iterate_batches, load_image_data

PROG = "train_vit.py"
# Defaults that depend on --data: the original ViT-S/16 recipe for real images, a tiny one for synthetic.
VIT_DEFAULTS = {
    "real": dict(image_size=224, patch_size=16, width=384, depth=12, heads=6, mlp_ratio=4.0,
                 epochs=20, batch_size=32, lr=1e-4),
    "synthetic": dict(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_ratio=4.0,
                      epochs=5, batch_size=64, lr=1e-3),
}
ARCH_FLAGS = ("image_size", "patch_size", "width", "depth", "heads", "mlp_ratio")
RESUME_FIELDS = {"epoch": int, "step": int, "optimizer": dict, "data": str}  # "step": 0 where an old one lacks it


def parse_args(argv=None):
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=VIT_NAMES, default=None, help="vit (ViT-S/16) or ndvit (default: vit)")
    p.add_argument("--data", help="synthetic (default), cifar10 (Hugging Face hub), or PATH to cifar-10-batches-py "
                                  "or a datasets.save_to_disk directory")
    p.add_argument("--epochs", type=positive_int, help="total epochs (default: 20 real data, 5 synthetic)")
    p.add_argument("--batch-size", type=positive_int, help="default: 32 real data, 64 synthetic")
    p.add_argument("--lr", type=positive_float,
                   help="AdamW learning rate (default: 1e-4 real data, as the original; 1e-3 synthetic)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.01, help="AdamW weight decay (torch default 0.01)")
    p.add_argument("--image-size", type=positive_int, help="model input size (default: 224 real data, 32 synthetic)")
    p.add_argument("--patch-size", type=positive_int, help="default: 16 real data, 8 synthetic")
    p.add_argument("--width", type=positive_int, help="default: 384 real data, 64 synthetic")
    p.add_argument("--depth", type=positive_int, help="default: 12 real data, 2 synthetic")
    p.add_argument("--heads", type=positive_int, help="default: 6 real data, 4 synthetic")
    p.add_argument("--mlp-ratio", type=positive_float,
                   help="MLP hidden / width (default 4; the original ran NdViT at 0.5)")
    p.add_argument("--limit", type=positive_int, help="use only the first N train and N test images (quick runs)")
    p.add_argument("--synthetic-size", type=positive_int, nargs=2, default=None, metavar=("TRAIN", "TEST"),
                   help="number of synthetic train / test images (default 2000 500, or the checkpoint's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    add_runtime_args(p, seed=42)  # --device, --amp/--no-amp, --seed (init and shuffling)
    p.add_argument("--out-dir", default=None, help="run directory (default: logs/vit-<model>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                   help="resume model, optimizer and epoch from PATH, or from the newest checkpoint in --out-dir")
    return p.parse_args(argv)


def resolve_resume(args) -> tuple[Path, Path | None, dict]:
    """(run directory, checkpoint path to resume from, checkpoint); (run directory, None, {}) for a fresh run.
    A resumed run continues in its checkpoint's directory unless --out-dir names an empty one."""
    explicit = args.resume not in (None, "latest")
    out_dir = Path(args.out_dir or (Path(args.resume).parent if explicit else f"logs/vit-{args.model or 'vit'}"))
    check_writable_dir(out_dir, "--out-dir")
    newest = next(iter(run_checkpoints(out_dir)), None)
    if args.resume is None:
        if newest is not None:
            raise UserError(f"{out_dir} already holds checkpoints; pass --resume to continue "
                            "or choose another --out-dir")
        return out_dir, None, {}
    path = Path(args.resume) if explicit else newest
    if path is None:
        raise UserError(f"--resume: no model_*.pt checkpoint in {out_dir}")
    if newest is not None and out_dir.resolve() != path.parent.resolve():
        raise UserError(f"{out_dir} holds the checkpoints of another run; omit --out-dir to continue in "
                        f"{path.parent} or choose another --out-dir")
    ckpt = load_checkpoint(path, expect_kind="vit")
    ckpt.setdefault("step", 0)
    wrong = [k for k, kind in RESUME_FIELDS.items() if not isinstance(ckpt.get(k), kind) or isinstance(ckpt[k], bool)]
    wrong += [f"config.{k}" for k in (*ARCH_FLAGS, "num_classes") if k not in ckpt["config"]]
    if wrong:
        raise UserError(f"{path} is not a checkpoint train_vit.py can resume: {', '.join(wrong)} missing or malformed")
    if args.model is not None and args.model != ckpt["model_name"]:
        raise UserError(f"--model {args.model} given but {path} holds a {ckpt['model_name']} model")
    return out_dir, path, ckpt


def continue_log(src_dir: Path, out_dir: Path, epoch: int) -> None:
    """out_dir/log.txt := the lines of src_dir/log.txt up to ``epoch``, so a resumed run repeats no epoch."""
    log = src_dir / "log.txt"
    lines = log.read_text().splitlines(keepends=True) if log.is_file() else []
    atomic_write(out_dir / "log.txt", "".join(line for line in lines if (first := line.split()[:1])
                                               and first[0].isdigit() and int(first[0]) <= epoch))


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    out_dir, resume_path, ckpt = resolve_resume(args)

    data_spec = args.data or ckpt.get("data", "synthetic")
    preset = VIT_DEFAULTS["synthetic" if data_spec == "synthetic" else "real"]
    hp = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in preset.items()}
    synthetic_size = args.synthetic_size or ckpt.get("synthetic_size") or (2000, 500)
    data = load_image_data(data_spec, *synthetic_size)
    train_split, test_split = data.train.head(args.limit), data.test.head(args.limit)

    seed_everything(args.seed)
    if ckpt:
        model_name, config = ckpt["model_name"], dict(ckpt["config"])
        changed = [f"--{k.replace('_', '-')}" for k in ARCH_FLAGS if getattr(args, k) is not None
                   and getattr(args, k) != config[k]]
        if changed:
            raise UserError(f"{', '.join(changed)} differ from the checkpoint's architecture; drop them to resume")
        if config["num_classes"] != data.num_classes:
            raise UserError(f"checkpoint has {config['num_classes']} classes, {data_spec} has {data.num_classes}")
    else:
        model_name = args.model or "vit"
        config = {k: hp[k] for k in ARCH_FLAGS} | {"num_classes": data.num_classes}
    try:
        model = build_vit(model_name, **config).to(device)
    except ValueError as e:
        raise UserError(str(e)) from e
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=args.weight_decay)
    start_epoch, step = 1, 0
    if ckpt:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])  # moves the AdamW state to the parameters' device
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{resume_path} does not fit its own model: {str(e).splitlines()[0][:160]}") from e
        for group in optimizer.param_groups:  # an explicit --lr / --weight-decay wins over the saved ones
            group["lr"], group["weight_decay"] = hp["lr"], args.weight_decay
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        print(f"resumed from {resume_path} (epoch {ckpt['epoch']}, step {step})")
    run_model = torch.compile(model) if args.compile else model

    print(f"{model_name}: {model.num_params():,} parameters, config {json.dumps(model.config.to_dict())}")
    print(f"data {data.name}: {len(train_split):,} train / {len(test_split):,} test images, "
          f"{data.num_classes} classes; device {device}; lr {hp['lr']:g}, batch {hp['batch_size']}")
    if start_epoch > hp["epochs"]:
        print(f"nothing to do: checkpoint is at epoch {start_epoch - 1}, --epochs is {hp['epochs']}")
        return

    lock = rundir.lock(out_dir)  # held while this process runs: a second writer fails at once
    if ckpt:
        aside = rundir.set_aside(out_dir, ckpt["epoch"]) if out_dir.resolve() == resume_path.parent.resolve() else None
        if aside is not None:
            print(f"rewound to epoch {ckpt['epoch']}: the later checkpoints and the old log are in {aside}")
        continue_log(resume_path.parent, out_dir, ckpt["epoch"])
    batches_per_epoch = math.ceil(len(train_split) / hp["batch_size"])
    amp = resolve_amp(device, args.amp)
    for epoch in range(start_epoch, hp["epochs"] + 1):
        model.train()
        t0, loss_sum, correct = time.time(), 0.0, 0
        # the shuffle depends only on (seed, epoch), so a resumed run sees the same order
        batches = iterate_batches(train_split, hp["batch_size"], model.config.image_size, device,
                                  shuffle_seed=(args.seed * 1000 + epoch) % 2**64)
        bar = tqdm(batches, total=batches_per_epoch, desc=f"epoch {epoch}/{hp['epochs']}", leave=False)
        for images, labels in bar:
            with autocast(device, amp):
                logits = run_model(images).float()
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum().item()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        train_loss, train_acc = loss_sum / len(train_split), correct / len(train_split)
        test = evaluate(run_model, test_split, hp["batch_size"], device, desc="test", amp=amp)
        print(f"epoch {epoch:3d} | train loss {train_loss:.4f} acc {train_acc:.4f} | "
              f"test loss {test['loss']:.4f} top-1 {test['top1']:.4f} | {time.time() - t0:.1f}s")
        with open(out_dir / "log.txt", "a") as f:
            f.write(f"{epoch} train {train_loss:.6f}\n{epoch} train_acc {train_acc:.4f}\n"
                    f"{epoch} test {test['loss']:.4f}\n{epoch} top1 {test['top1']:.4f}\n")
        save_checkpoint(out_dir / f"model_{epoch:03d}.pt", model, kind="vit", model_name=model_name,
                        optimizer=optimizer.state_dict(), epoch=epoch, step=step, data=data_spec,
                        synthetic_size=list(synthetic_size), seed=args.seed, train_loss=train_loss,
                        test_top1=test["top1"], test_loss=test["loss"])
    lock.close()
    print(f"final test top-1 {test['top1']:.4f}; checkpoints in {out_dir}")


if __name__ == "__main__":
    run_main(main, PROG)
