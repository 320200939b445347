"""The run config of experiment/train_gpt.py: every hyperparameter in one dataclass, the presets as
instances of it, flags applied in one place, the lr schedule and the batch arithmetic.

A checkpoint stores ``asdict(config)``; ``--resume`` rebuilds the config from it and applies only the
flags given again. The fields in FROZEN_ON_RESUME define the model and the token stream and cannot change.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from pathlib import Path

from utils import rundir
from utils.checkpoint import config_from_dict, gpt_config_from_dict, is_resumable, load_checkpoint
from utils.cli import REPO, UserError, nonneg_float, nonneg_int, positive_float, positive_int
from utils.identity import data_fingerprint
from utils.shards import read_manifest

BUILTIN_DATA = REPO / "data" / "builtin"


@dataclass(frozen=True)
class TrainConfig:
    # the model: a name of models.MODEL_NAMES; sizes None = the model's own (GPT-2 124M: 12/12/768/1024)
    model: str = "gpt2"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    # the token stream
    preset: str = "gpt2-124m"
    data: str | None = None  # token shard directory; None = the builtin corpus (prepared on first use)
    order: str | None = None  # "shards" | "windows"; None = utils.loader.default_order(data)
    seed: int = 1337
    micro_batch: int = 64  # sequences per forward per process
    seq_len: int = 1024
    total_batch: int | None = 524_288  # tokens per optimizer step; None = two micro-batches of one process
    # optimisation (GPT-3 small, as in build-nanogpt)
    max_steps: int = 19_073
    warmup_steps: int = 715
    lr: float = 6e-4
    min_lr: float = 6e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 = no clipping
    # evaluation and checkpoints
    eval_every: int = 250
    val_tokens: int = 20 * 64 * 1024 * 8  # per evaluation, over all processes (build-nanogpt's 10,485,760)
    hellaswag: str | None = None  # jsonl; None = data/hellaswag or ../shared/data when found
    hellaswag_limit: int | None = None
    no_hellaswag: bool = False
    prompt: str = "Hello, I'm a language model,"
    keep_checkpoints: int = 0  # keep only the newest K snapshots (0 = all)
    full_checkpoints: int = 2  # the newest K keep the optimizer/data/RNG state --resume needs (0 = all)
    # runtime choices a resume keeps (None = the device's default: utils.precision; compile on CUDA)
    amp: bool | None = None
    compile: bool | None = None


TRAIN_PRESETS = {
    "gpt2-124m": TrainConfig(preset="gpt2-124m", data=str(REPO / "data" / "edu_fineweb10B")),
    # a tiny GPT 200 steps on the builtin corpus: under a CPU-minute, evaluations included
    "smoke": TrainConfig(preset="smoke", n_layer=2, n_head=2, n_embd=64, block_size=64, micro_batch=4,
                         seq_len=64, total_batch=None, max_steps=200, warmup_steps=20, lr=3e-3, min_lr=3e-4,
                         eval_every=50, val_tokens=20 * 4 * 64, hellaswag_limit=50),
}
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
MODEL_SHAPE = ("n_layer", "n_head", "n_embd", "block_size")
FROZEN_ON_RESUME = ("model", "preset", *MODEL_SHAPE, "seq_len", "micro_batch", "total_batch", "order", "seed")


HYPERPARAMETER_FLAGS = [  # (field, argparse type, help) of experiment/train_gpt.py's hyperparameter flags
    ("max_steps", positive_int, None), ("warmup_steps", nonneg_int, None), ("eval_every", positive_int, None),
    ("micro_batch", positive_int, "sequences per forward per process"),
    ("seq_len", positive_int, "tokens per sequence (T), at most the model's block size"),
    ("total_batch", positive_int, "tokens per optimizer step (gradient accumulation fills it)"),
    ("lr", positive_float, "max learning rate"), ("min_lr", nonneg_float, None),
    ("weight_decay", nonneg_float, None), ("grad_clip", nonneg_float, "max grad norm (0 = no clipping)"),
    ("val_tokens", positive_int, "val tokens per evaluation over all processes, whatever their number "
                                 "(smoke 5,120; gpt2-124m 10,485,760)"),
    ("val_batches", positive_int, "older spelling of --val-tokens: N x micro-batch x seq-len tokens"),
    ("n_layer", positive_int, None), ("n_head", positive_int, None), ("n_embd", positive_int, None),
    ("block_size", positive_int, "the model's context length (smoke 64, gpt2-124m 1024)"),
    ("keep_checkpoints", nonneg_int, "keep only the newest K checkpoints (0 = keep all)"),
    ("full_checkpoints", nonneg_int, "the newest K checkpoints keep the optimizer/data/RNG state --resume "
                                     "needs, older ones only the model (default 2; 0 = all)"),
]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def from_flags(flags: dict, base: TrainConfig) -> TrainConfig:
    """``base`` with every flag that was given (not None) applied; ``val_batches`` (micro-batches of one
    process) is the older spelling of ``val_tokens``."""
    cfg = replace(base, **{k: v for k, v in flags.items() if k in FIELDS and v is not None})
    if flags.get("val_batches") is not None:
        if flags.get("val_tokens") is not None:
            raise UserError("give --val-tokens or --val-batches, not both")
        cfg = replace(cfg, val_tokens=flags["val_batches"] * cfg.micro_batch * cfg.seq_len)
    if cfg.total_batch is None:
        cfg = replace(cfg, total_batch=2 * cfg.micro_batch * cfg.seq_len)
    return cfg


def for_resume(saved: TrainConfig, flags: dict, allow_data_change: bool, warn,
               data_id: str | None = None) -> TrainConfig:
    """The saved config with the flags given again; a change of FROZEN_ON_RESUME is a UserError, and so is
    other data without ``allow_data_change``: by content where the checkpoint has its data's fingerprint
    ``data_id`` (a directory rebuilt in place is other data), else by path and manifest."""
    for name in FROZEN_ON_RESUME:
        if flags.get(name) is not None and flags[name] != getattr(saved, name):
            raise UserError(f"{flag(name)} cannot change on resume (the run has {getattr(saved, name)!r}); "
                            "start a new run in another --out-dir instead")
    data = flags.get("data") or saved.data
    if data_id is not None and data is not None and Path(data).is_dir():
        now = data_fingerprint(data)
        changed = now != data_id and f"the data in {data} (fingerprint {now}) is not what the run was trained on " \
                                     f"({data_id})"
    else:
        changed = flags.get("data") is not None and not same_data(flags["data"], saved.data) and \
            f"the run was trained on {saved.data}, not on {flags['data']}"
    if changed:
        if not allow_data_change:
            raise UserError(f"{changed}; pass --allow-data-change to continue on it anyway")
        warn(f"warning: continuing on other data: {changed}")
    return from_flags(flags, saved)


def same_path(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def same_data(a, b) -> bool:
    """The same directory, or a moved/copied one: both finished with the same settings and shards."""
    if same_path(a, b):
        return True
    ma, mb = read_manifest(a), read_manifest(b) if b is not None else None
    return ma is not None and ma == mb


def from_train_args(args: dict, model_config: dict) -> TrainConfig:
    """Convert the ``train_args`` (argparse namespace) of a checkpoint written before TrainConfig."""
    try:
        values = {k: args[k] for k in FIELDS if k in args and k not in MODEL_SHAPE and k != "order"}
        values["val_tokens"] = args["val_batches"] * args["micro_batch"] * args["seq_len"]
    except (KeyError, TypeError) as e:
        raise UserError(f"old-format checkpoint: cannot convert its train_args to a TrainConfig ({e})") from e
    shape = {k: model_config[k] for k in MODEL_SHAPE}
    return TrainConfig(**values, **shape, order="shards")  # the only data order before TrainConfig


def from_checkpoint(ckpt: dict, where) -> TrainConfig:
    saved = ckpt.get("train_config")
    if isinstance(saved, dict):  # a field it lacks (added since) takes its default
        return config_from_dict(TrainConfig, saved, where, "train_config", defaults=True)
    if isinstance(ckpt.get("train_args"), dict):
        return from_train_args(ckpt["train_args"], ckpt["config"])
    raise UserError(f"{where} has no train_config (nor old-format train_args); it cannot be resumed")


def model_config(cfg: TrainConfig):
    """The GPTConfig of the run: the model's preset with the sizes the config sets."""
    from models import model_config as build

    try:
        return build(cfg.model, **{k: getattr(cfg, k) for k in MODEL_SHAPE if getattr(cfg, k) is not None})
    except ValueError as e:
        raise UserError(str(e)) from e


def check(cfg: TrainConfig) -> None:
    """Cross-field rules the flag types cannot see (each flag's own range is checked by argparse)."""
    if cfg.min_lr > cfg.lr:
        raise UserError(f"--min-lr ({cfg.min_lr}) must not exceed --lr ({cfg.lr})")
    if cfg.block_size is not None and cfg.seq_len > cfg.block_size:
        raise UserError(f"--seq-len {cfg.seq_len} exceeds the model's block size {cfg.block_size}; "
                        f"pass --block-size {cfg.seq_len} to train a model with a longer context")


def settle(flags: dict, cuda: bool, warn):
    """(config, GPTConfig, out-dir, resume checkpoint path, checkpoint) from train_gpt.py's flags: a preset
    with the flags given, or the resumed checkpoint's config with the flags given again. The checkpoint
    is read once, here."""
    fresh = from_flags(flags, TRAIN_PRESETS[flags["preset"] or ("gpt2-124m" if cuda else "smoke")])
    path = ckpt = None
    out = Path(flags["out_dir"] or REPO / "logs" / f"{fresh.model}-{fresh.preset}")
    if flags["resume"] is None:
        cfg = fresh
    else:
        if flags["overwrite"]:
            raise UserError("--overwrite starts a new run; it cannot be combined with --resume")
        if flags["resume"] == "latest":
            path, ckpt = rundir.newest_resumable(out, warn)
        else:
            path, ckpt = Path(flags["resume"]), load_checkpoint(flags["resume"], expect_kind="gpt")
            if not is_resumable(ckpt):
                raise UserError(f"{path} is a model-only checkpoint (no optimizer/data state); it can be "
                                "evaluated but not resumed")
            out = Path(flags["out_dir"] or path.parent)
        if type(ckpt["step"]) is not int:
            raise UserError(f"{path}: malformed step {ckpt['step']!r}; it cannot be resumed")
        cfg = for_resume(from_checkpoint(ckpt, path), flags, flags["allow_data_change"], warn,
                         data_id=ckpt.get("data_id"))
        if cfg.max_steps < ckpt["step"]:
            raise UserError(f"--max-steps {cfg.max_steps} is before the checkpoint's step {ckpt['step']}")
    model = gpt_config_from_dict(ckpt["config"], path) if ckpt else model_config(cfg)
    cfg = replace(cfg, data=str(Path(cfg.data or BUILTIN_DATA).resolve()),
                  **{k: getattr(model, k) for k in MODEL_SHAPE})
    check(cfg)
    return cfg, model, out, path, ckpt


def grad_accum_steps(cfg: TrainConfig, world: int) -> int:
    """Micro-steps per optimizer step so that ``total_batch`` tokens are seen for ``world`` processes."""
    per_micro_step = cfg.micro_batch * cfg.seq_len * world
    if cfg.total_batch % per_micro_step:
        raise UserError(f"--total-batch {cfg.total_batch} is not a multiple of micro-batch x seq-len x "
                        f"processes = {cfg.micro_batch} x {cfg.seq_len} x {world} = {per_micro_step}")
    return cfg.total_batch // per_micro_step


def val_steps(cfg: TrainConfig, world: int) -> int:
    """Val micro-batches per process: at least ``val_tokens`` over all processes, whatever their number."""
    return max(1, math.ceil(cfg.val_tokens / (cfg.micro_batch * cfg.seq_len * world)))


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to ``max_lr`` over ``warmup_steps``, cosine decay to ``min_lr`` at ``max_steps``,
    then ``min_lr``."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
