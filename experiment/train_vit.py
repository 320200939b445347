"""Train ViT-S/16 or NdViT on CIFAR-10 or on the synthetic image set, with per-epoch checkpoints.

    python experiment/train_vit.py                                   # synthetic, small ViT, ~1 min on CPU
    python experiment/train_vit.py --model ndvit --data cifar10      # ViT-S/16 config at 224 px, lr 1e-4
    python experiment/train_vit.py --out-dir logs/vit-vit --resume    # continue from the newest checkpoint

The run directory works as train_gpt.py's (utils/rundir.py): a resumed run continues in its checkpoint's
directory (or in an empty --out-dir); resuming an older checkpoint moves the later ones into
out-dir/abandoned/; a new run refuses a directory that holds a run (unless --overwrite); a second process
writing into a run directory fails at once (a lock).
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
from utils.cli import (
    ArgumentParser,
    UserError,
    add_runtime_args,
    nonneg_float,
    pick_device,
    positive_float,
    positive_int,
    run_main,
)
from utils.io import atomic_write
from utils.precision import autocast, resolve_amp
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
DEFAULT_SEED = 42
RESUME_FIELDS = {"epoch": int, "step": int, "optimizer": dict, "data": str}  # "step": 0 where an old one lacks it


def keep_epochs_through(out_dir: Path, epoch: int) -> None:
    """log.txt := its lines of the epochs up to ``epoch`` (an epoch's lines precede its checkpoint), so a
    resumed run repeats no epoch."""
    log = Path(out_dir) / "log.txt"
    if log.is_file():
        lines = log.read_text().splitlines(keepends=True)
        atomic_write(log, "".join(line for line in lines if (first := line.split()[:1]) and first[0].isdigit()
                                  and int(first[0]) <= epoch))


# model_NNN.pt per epoch; a checkpoint with the optimizer state and its epoch can be resumed
VIT = rundir.Scheme("vit", counter="epoch", digits=3, resume_keys=("optimizer", "epoch"),
                    truncate=keep_epochs_through)


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
    add_runtime_args(p, seed=DEFAULT_SEED, seed_default=f"{DEFAULT_SEED}; a resumed run keeps its own")
    p.set_defaults(seed=None)  # resolved in main (resumed_seed): init and every epoch's shuffle depend on it
    p.add_argument("--out-dir", default=None, help="run directory (default: logs/vit-<model>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                   help="resume model, optimizer and epoch from PATH, or from the newest checkpoint in --out-dir")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out-dir that holds one (deletes its log and checkpoints)")
    return p.parse_args(argv)


def check_resumable(path: Path, ckpt: dict, model: str | None) -> None:
    """What train_vit.py needs of a checkpoint it resumes, beyond rundir.locate's checks (one-line errors)."""
    ckpt.setdefault("step", 0)
    wrong = [k for k, kind in RESUME_FIELDS.items() if not isinstance(ckpt.get(k), kind) or isinstance(ckpt[k], bool)]
    wrong += [f"config.{k}" for k in (*ARCH_FLAGS, "num_classes") if k not in ckpt["config"]]
    if wrong:
        raise UserError(f"{path} is not a checkpoint train_vit.py can resume: {', '.join(wrong)} missing or malformed")
    if model is not None and model != ckpt["model_name"]:
        raise UserError(f"--model {model} given but {path} holds a {ckpt['model_name']} model")


def resumed_seed(flag: int | None, ckpt: dict) -> int:
    """The run's seed: a resumed run keeps its own (every epoch's shuffle depends on it), else --seed or 42."""
    saved = ckpt.get("seed")
    if not isinstance(saved, int) or isinstance(saved, bool):
        return DEFAULT_SEED if flag is None else flag
    if flag is not None and flag != saved:
        raise UserError(f"--seed {flag} differs from the resumed run's seed {saved} (its shuffles depend on it); "
                        "drop --seed to resume")
    return saved


def model_spec(args, ckpt: dict, hp: dict, data_spec: str, num_classes: int) -> tuple[str, dict]:
    """(model name, config): the resumed checkpoint's (the architecture flags must agree), else the flags'."""
    if not ckpt:
        return args.model or "vit", {k: hp[k] for k in ARCH_FLAGS} | {"num_classes": num_classes}
    config = dict(ckpt["config"])
    changed = [f"--{k.replace('_', '-')}" for k in ARCH_FLAGS if getattr(args, k) is not None
               and getattr(args, k) != config[k]]
    if changed:
        raise UserError(f"{', '.join(changed)} differ from the checkpoint's architecture; drop them to resume")
    if config["num_classes"] != num_classes:
        raise UserError(f"checkpoint has {config['num_classes']} classes, {data_spec} has {num_classes}")
    return ckpt["model_name"], config


def train_epoch(model, run_model, optimizer, batches, n: int, device: str, amp: bool) -> tuple[float, float]:
    """One pass over ``batches`` (a tqdm of the ``n`` training images), an optimizer step per batch; returns
    the epoch's mean train loss and accuracy. ``run_model`` is ``model`` or its compiled form."""
    model.train()
    loss_sum, correct = 0.0, 0
    for images, labels in batches:
        with autocast(device, amp):
            logits = run_model(images).float()
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        batches.set_postfix(loss=f"{loss.item():.4f}")
    return loss_sum / n, correct / n


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    out_dir, resume_path, ckpt = rundir.locate(VIT, args.resume, args.out_dir, f"logs/vit-{args.model or 'vit'}",
                                               args.overwrite)
    if ckpt is not None:
        check_resumable(resume_path, ckpt, args.model)
    saved = ckpt or {}

    data_spec = args.data or saved.get("data", "synthetic")
    preset = "synthetic" if data_spec == "synthetic" else "real"
    hp = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in VIT_DEFAULTS[preset].items()}
    synthetic_size = args.synthetic_size or saved.get("synthetic_size") or (2000, 500)
    data = load_image_data(data_spec, *synthetic_size)
    train_split, test_split = data.train.head(args.limit), data.test.head(args.limit)

    args.seed = resumed_seed(args.seed, saved)
    seed_everything(args.seed)
    model_name, config = model_spec(args, saved, hp, data_spec, data.num_classes)
    try:
        model = build_vit(model_name, **config).to(device)
    except ValueError as e:
        raise UserError(str(e)) from e
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=args.weight_decay)
    run_dir = rundir.RunDir(out_dir, VIT, resume_path, ckpt)
    del ckpt, saved  # the state goes to the model and optimizer (RunDir.restore), and its memory with it
    resumed, start_epoch, step = run_dir.restore(model, optimizer), 1, 0
    if resumed:
        for group in optimizer.param_groups:  # an explicit --lr / --weight-decay wins over the saved ones
            group["lr"], group["weight_decay"] = hp["lr"], args.weight_decay
        start_epoch, step = resumed["epoch"] + 1, resumed["step"]
        print(f"resumed from {resume_path} (epoch {resumed['epoch']}, step {step})")
    run_model = torch.compile(model) if args.compile else model

    print(f"{model_name}: {model.num_params():,} parameters, config {json.dumps(model.config.to_dict())}")
    print(f"data {data.name}: {len(train_split):,} train / {len(test_split):,} test images, "
          f"{data.num_classes} classes; device {device}; lr {hp['lr']:g}, batch {hp['batch_size']}")
    if start_epoch > hp["epochs"]:
        print(f"nothing to do: checkpoint is at epoch {start_epoch - 1}, --epochs is {hp['epochs']}")
        return

    run_dir.claim({"model": model_name, "preset": preset, "config": model.config.to_dict(),
                   "train_config": {**hp, "weight_decay": args.weight_decay, "seed": args.seed, "data": data_spec,
                                    "limit": args.limit}}, args.overwrite)
    batches_per_epoch = math.ceil(len(train_split) / hp["batch_size"])  # optimizer steps
    amp = resolve_amp(device, args.amp)
    for epoch in range(start_epoch, hp["epochs"] + 1):
        t0 = time.time()
        # the shuffle depends only on (seed, epoch), so a resumed run sees the same order
        batches = iterate_batches(train_split, hp["batch_size"], model.config.image_size, device,
                                  shuffle_seed=(args.seed * 1000 + epoch) % 2**64)
        bar = tqdm(batches, total=batches_per_epoch, desc=f"epoch {epoch}/{hp['epochs']}", leave=False)
        train_loss, train_acc = train_epoch(model, run_model, optimizer, bar, len(train_split), device, amp)
        step += batches_per_epoch
        test = evaluate(run_model, test_split, hp["batch_size"], device, desc="test", amp=amp)
        print(f"epoch {epoch:3d} | train loss {train_loss:.4f} acc {train_acc:.4f} | "
              f"test loss {test['loss']:.4f} top-1 {test['top1']:.4f} | {time.time() - t0:.1f}s")
        with open(out_dir / "log.txt", "a") as f:
            f.write(f"{epoch} train {train_loss:.6f}\n{epoch} train_acc {train_acc:.4f}\n"
                    f"{epoch} test {test['loss']:.4f}\n{epoch} top1 {test['top1']:.4f}\n")
        run_dir.save(epoch, model_name=model_name, step=step, data=data_spec, synthetic_size=list(synthetic_size),
                     seed=args.seed, train_loss=train_loss, test_top1=test["top1"], test_loss=test["loss"])
    run_dir.release()
    print(f"final test top-1 {test['top1']:.4f}; checkpoints in {out_dir}")


if __name__ == "__main__":
    run_main(main, PROG)
