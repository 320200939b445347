"""Image data for the ViT scripts: CIFAR-10 (hub, local copy) or a generated synthetic set,
preprocessing (resize + normalize, no torchvision), batching, top-1 evaluation and checkpoint rebuild.

Images are held as uint8 tensors (N, 3, H, W) at their native size; ``preprocess`` turns a batch into
floats at the model's size on the model's device: resize (bilinear) then (x - 0.5) / 0.5, as the
original's ``Resize(224) + Normalize(mean=std=0.5)``.

``--data`` spec: ``synthetic`` (default), ``cifar10`` (``datasets.load_dataset``, needs the network
or a warm HF cache), or a PATH to a ``cifar-10-batches-py`` directory (or its parent) or a
``datasets.save_to_disk`` directory with train/test splits.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.cli import UserError
from utils.precision import autocast

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYNTHETIC_CLASSES = tuple(f"{colour}-{shape}" for colour in ("warm", "cool")
                          for shape in ("hstripes", "vstripes", "diagonal", "checker", "disk"))


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> ImageSplit:
        return self if n is None else ImageSplit(self.images[:n], self.labels[:n])


@dataclass
class ImageData:
    name: str
    train: ImageSplit
    test: ImageSplit
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----- synthetic -----

def synthetic_split(n: int, seed: int, size: int = 32) -> ImageSplit:
    """``n`` noisy images of 10 classes = 5 shapes (horizontal / vertical / diagonal stripes,
    checkerboard, disk) x 2 foreground colour families (warm, cool), random frequency, phase,
    position, colours and noise; deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    labels = torch.randint(0, len(SYNTHETIC_CLASSES), (n,), generator=g)
    coords = torch.arange(size, dtype=torch.float32) / size
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    freq, phase = 2 + 2 * rand(n, 1, 1), rand(n, 1, 1)
    wave = lambda t: torch.sin(2 * math.pi * (freq * t + phase)) > 0  # noqa: E731
    cx, cy, radius = 0.3 + 0.4 * rand(n, 1, 1), 0.3 + 0.4 * rand(n, 1, 1), 0.15 + 0.15 * rand(n, 1, 1)
    masks = torch.stack([
        wave(yy).expand(n, size, size),
        wave(xx).expand(n, size, size),
        wave((xx + yy) / 2),
        wave(xx) ^ wave(yy + 0.25),
        (xx - cx) ** 2 + (yy - cy) ** 2 < radius ** 2,
    ], dim=1)
    mask = masks[torch.arange(n), labels % 5].unsqueeze(1)  # (n, 1, S, S)
    families = torch.tensor([[0.85, 0.35, 0.15], [0.15, 0.45, 0.85]])  # warm, cool RGB
    fg = (families[labels // 5] + 0.3 * (rand(n, 3) - 0.5)).view(n, 3, 1, 1)
    bg = (0.15 + 0.35 * rand(n, 1) + 0.1 * (rand(n, 3) - 0.5)).view(n, 3, 1, 1)
    img = torch.where(mask, fg, bg) + 0.08 * torch.randn(n, 3, size, size, generator=g)
    return ImageSplit((img.clamp(0, 1) * 255).round().to(torch.uint8), labels)


def synthetic_data(train_size: int = 2000, test_size: int = 500, seed: int = 0) -> ImageData:
    return ImageData("synthetic", synthetic_split(train_size, seed), synthetic_split(test_size, seed + 1),
                     SYNTHETIC_CLASSES)


# ----- CIFAR-10 -----

def _read_cifar_batches(paths: list[Path]) -> ImageSplit:
    """One split from pickled batches (rows of 3072 bytes: the red, green, blue 32 x 32 planes)."""
    data, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = [int(y) for y in batch[b"labels"]]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"cannot read CIFAR-10 batch {path}: {type(e).__name__}: {e}") from e
        if len(batch_labels) != len(images) or not all(0 <= y < 10 for y in batch_labels):
            raise UserError(f"CIFAR-10 batch {path}: {len(images)} images but {len(batch_labels)} labels, "
                            "or a label outside 0..9")
        data.append(images)
        labels += batch_labels
    return ImageSplit(torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.int64))


def load_cifar_batches(root: Path) -> ImageData:
    """The CIFAR-10 "python version": data_batch_1..5 and test_batch pickles."""
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files or not (root / "test_batch").is_file():
        raise UserError(f"{root} has no data_batch_* / test_batch files (CIFAR-10 python version)")
    return ImageData("cifar10", _read_cifar_batches(train_files), _read_cifar_batches([root / "test_batch"]),
                     CIFAR10_CLASSES)


def _hf_split(ds) -> ImageSplit:
    from datasets import Image

    image_col = next((k for k, f in ds.features.items() if isinstance(f, Image)), None)
    label_col = next((k for k in ("label", "labels", "fine_label") if k in ds.features), None)
    if image_col is None or label_col is None:
        raise UserError(f"dataset has no image and label columns (columns: {', '.join(ds.features)})")
    images = [np.asarray(im.convert("RGB"), dtype=np.uint8)
              for im in tqdm(ds[image_col], desc="decode", leave=False)]
    return ImageSplit(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                      torch.tensor(list(ds[label_col]), dtype=torch.int64))


def _hf_data(dsd, name: str) -> ImageData:
    if "train" not in dsd or "test" not in dsd:
        raise UserError(f"{name}: expected 'train' and 'test' splits, found {', '.join(dsd) or 'none'}")
    label = dsd["train"].features.get("label")
    classes = tuple(label.names) if hasattr(label, "names") else CIFAR10_CLASSES
    return ImageData(name, _hf_split(dsd["train"]), _hf_split(dsd["test"]), classes)


def load_image_data(spec: str, train_size: int = 2000, test_size: int = 500) -> ImageData:
    """Resolve a ``--data`` spec (see the module docstring) into train and test splits."""
    if spec == "synthetic":
        return synthetic_data(train_size, test_size)
    if spec == "cifar10":
        import datasets

        try:
            return _hf_data(datasets.load_dataset("cifar10"), "cifar10")
        except UserError:
            raise
        except Exception as e:  # offline, hub changes, ...: the many failure types of load_dataset
            raise UserError("cannot load CIFAR-10 from the Hugging Face hub (offline?); pass --data PATH "
                            f"to a cifar-10-batches-py or save_to_disk copy ({type(e).__name__})") from e
    path = Path(spec)
    if not path.exists():
        raise UserError(f"dataset path not found: {path} (use 'synthetic', 'cifar10' or an existing path)")
    for root in (path, path / "cifar-10-batches-py"):
        if (root / "test_batch").is_file():
            return load_cifar_batches(root)
    if (path / "dataset_dict.json").is_file():
        import datasets

        return _hf_data(datasets.load_from_disk(str(path)), path.name)
    raise UserError(f"{path} is neither a cifar-10-batches-py directory nor a datasets.save_to_disk directory")


# ----- preprocessing, batches, evaluation -----

def preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, C, image_size, image_size) normalized to [-1, 1]."""
    x = images.float() / 255.0
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return (x - 0.5) / 0.5


def iterate_batches(split: ImageSplit, batch_size: int, image_size: int, device="cpu", shuffle_seed: int | None = None):
    """Yield (images, labels) on ``device``; shuffled by ``shuffle_seed`` (reproducible) if given."""
    n = len(split)
    order = (torch.arange(n) if shuffle_seed is None
             else torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)))
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        images = split.images[idx].to(device, non_blocking=True)
        yield preprocess(images, image_size), split.labels[idx].to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model, split: ImageSplit, batch_size: int, device="cpu", desc: str = "eval", amp: bool = False) -> dict:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``split`` (``amp``: bf16 autocast)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    batches = iterate_batches(split, batch_size, model.config.image_size, device)
    for images, labels in tqdm(batches, total=math.ceil(len(split) / batch_size), desc=desc, leave=False):
        with autocast(device, amp):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
    model.train(was_training)
    n = max(len(split), 1)
    return {"top1": correct / n, "loss": loss_sum / n, "n": len(split)}


def load_vit(path, device="cpu"):
    """(model on ``device`` in eval mode, checkpoint dict) for a checkpoint saved by train_vit.py."""
    from models import VIT_NAMES, build_vit
    from utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, expect_kind="vit")
    if ckpt.get("model_name") not in VIT_NAMES:
        raise UserError(f"{path}: unknown vision model {ckpt.get('model_name')!r}")
    try:
        model = build_vit(ckpt["model_name"], **ckpt["config"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"{path}: weights do not match the stored config ({str(e).splitlines()[0][:120]})") from e
    return model.to(device).eval(), ckpt
